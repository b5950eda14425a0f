// rag-gql from Node 20: log in, upload a file, wait until it is READY, stream an answer.
//
//   npm ci
//   node quickstart.mjs --email you@example.com --password '...' \
//     --file notes.md --question 'What do my notes say about backups?'
//
// HTTP (`login`, the multipart `uploadDocument`) uses Node's own fetch and FormData; the
// `documentEvents` and `answer` subscriptions use graphql-ws (`graphql-transport-ws`,
// authenticated in `connection_init`) over the `ws` package. Each option can also be given as
// an environment variable: RAG_GQL_URL, RAG_GQL_EMAIL, RAG_GQL_PASSWORD.

import { openAsBlob } from "node:fs";
import { basename } from "node:path";
import { parseArgs } from "node:util";
import { createClient } from "graphql-ws";
import WebSocket from "ws";

// A GraphQL error (thrown below with its code) ends the script with its message, not a stack.
process.on("uncaughtException", (error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});

const LOGIN = `
mutation Login($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken }
}`;

const UPLOAD = `
mutation Upload($file: Upload!) {
  uploadDocument(file: $file) { id filename status duplicate }
}`;

const DOCUMENT_EVENTS = `
subscription Progress($id: ID!) {
  documentEvents(documentId: $id) { status pagesDone pagesTotal chunkCount error }
}`;

const ANSWER = `
subscription Answer($question: String!) {
  answer(question: $question) {
    __typename
    ... on AnswerSources { sources { score page document { filename } } }
    ... on AnswerToken { text }
    ... on AnswerDone { citations { number filename page } grounded }
    ... on AnswerError { code message }
  }
}`;

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: process.env.RAG_GQL_URL ?? "http://127.0.0.1:8000" },
    email: { type: "string", default: process.env.RAG_GQL_EMAIL },
    password: { type: "string", default: process.env.RAG_GQL_PASSWORD },
    file: { type: "string" },
    question: { type: "string" },
  },
});
for (const name of ["email", "password", "file", "question"]) {
  if (!args[name]) {
    console.error(`--${name} is required (--email and --password: or RAG_GQL_EMAIL, RAG_GQL_PASSWORD)`);
    process.exit(2);
  }
}

const httpUrl = `${args.url.replace(/\/$/, "")}/graphql`;
const wsUrl = httpUrl.replace(/^http/, "ws"); // http -> ws, https -> wss

/** The `data` of a GraphQL response; throws with the first error's code and message. */
async function dataOf(response) {
  const body = await response.json();
  if (body.errors?.length) {
    const [error] = body.errors;
    throw new Error(`${error.extensions?.code ?? "ERROR"}: ${error.message}`);
  }
  return body.data;
}

// 1. Log in over HTTP.
const login = await dataOf(
  await fetch(httpUrl, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ query: LOGIN, variables: { email: args.email, password: args.password } }),
  }),
);
const token = login.login.accessToken;
console.log(`logged in as ${args.email}`);

// 2. Upload as a GraphQL multipart request; the preflight header is the CSRF guard.
const form = new FormData();
form.append("operations", JSON.stringify({ query: UPLOAD, variables: { file: null } }));
form.append("map", JSON.stringify({ 0: ["variables.file"] }));
form.append("0", await openAsBlob(args.file), basename(args.file));
const uploaded = await dataOf(
  await fetch(httpUrl, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Apollo-Require-Preflight": "true" },
    body: form,
  }),
);
const document = uploaded.uploadDocument;
console.log(`uploaded ${document.filename}: ${document.id} ${document.status}`);

// 3 and 4 over one WebSocket: follow the document until READY, then stream an answer.
const client = createClient({
  url: wsUrl,
  webSocketImpl: WebSocket,
  connectionParams: { authorization: `Bearer ${token}` },
});

/** Yields each event's `data` of a subscription; throws on a GraphQL error. */
async function* subscribe(query, variables) {
  for await (const result of client.iterate({ query, variables })) {
    if (result.errors?.length) {
      const [error] = result.errors;
      throw new Error(`${error.extensions?.code ?? "ERROR"}: ${error.message}`);
    }
    yield result.data;
  }
}

let status = document.status;
try {
  for await (const { documentEvents: progress } of subscribe(DOCUMENT_EVENTS, { id: document.id })) {
    status = progress.status;
    console.log(`document ${status} (${progress.pagesDone}/${progress.pagesTotal} pages)`);
    if (status === "FAILED") {
      throw new Error(`ingestion FAILED: ${progress.error}`);
    }
  }
  if (status !== "READY") {
    throw new Error(`the document stream ended at ${status}`);
  }

  for await (const { answer } of subscribe(ANSWER, { question: args.question })) {
    switch (answer.__typename) {
      case "AnswerSources":
        console.log(`${answer.sources.length} sources found`);
        process.stdout.write("answer: ");
        break;
      case "AnswerToken":
        process.stdout.write(answer.text); // each token as it arrives
        break;
      case "AnswerDone":
        process.stdout.write("\n");
        for (const citation of answer.citations) {
          console.log(`[${citation.number}] ${citation.filename}, page ${citation.page}`);
        }
        break;
      case "AnswerError":
        throw new Error(`answer failed: ${answer.code}: ${answer.message}`);
    }
  }
} finally {
  await client.dispose();
}
