"""rag-gql from Python with `gql`: log in, upload a file, wait until it is READY, stream an answer.

    pip install 'gql[httpx,websockets]'
    python examples/python/quickstart.py --email you@example.com --password '...' \
        --file notes.md --question 'What do my notes say about backups?'

HTTP (`login`, the multipart `uploadDocument`) goes through gql's httpx transport; the
`documentEvents` and `answer` subscriptions through its WebSocket transport
(`graphql-transport-ws`, authenticated in `connection_init`). Each option can also be given
as an environment variable: RAG_GQL_URL, RAG_GQL_EMAIL, RAG_GQL_PASSWORD.
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any

from gql import Client, FileVar, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

LOGIN = GraphQLRequest("""
mutation Login($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken }
}
""")

UPLOAD = GraphQLRequest("""
mutation Upload($file: Upload!) {
  uploadDocument(file: $file) { id filename status duplicate }
}
""")

DOCUMENT_EVENTS = GraphQLRequest("""
subscription Progress($id: ID!) {
  documentEvents(documentId: $id) { status pagesDone pagesTotal chunkCount error }
}
""")

ANSWER = GraphQLRequest("""
subscription Answer($question: String!) {
  answer(question: $question) {
    __typename
    ... on AnswerSources { sources { score page document { filename } } }
    ... on AnswerToken { text }
    ... on AnswerDone { citations { number filename page } grounded }
    ... on AnswerError { code message }
  }
}
""")


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; each of --url, --email, --password defaults to its variable."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default=os.environ.get("RAG_GQL_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--email", default=os.environ.get("RAG_GQL_EMAIL"))
    parser.add_argument("--password", default=os.environ.get("RAG_GQL_PASSWORD"))
    parser.add_argument("--file", required=True, type=Path, help="the document to upload")
    parser.add_argument("--question", required=True)
    args = parser.parse_args(argv)
    if not args.email or not args.password:
        parser.error("--email and --password (or RAG_GQL_EMAIL, RAG_GQL_PASSWORD) are required")
    return args


async def main(args: argparse.Namespace) -> int:
    """Runs the whole flow; returns the exit status (1 when ingestion or the answer fails)."""
    http_url = args.url.rstrip("/") + "/graphql"
    ws_url = http_url.replace("http", "ws", 1)  # http -> ws, https -> wss

    # 1. Log in over HTTP.
    async with Client(transport=HTTPXAsyncTransport(url=http_url)) as session:
        login = await session.execute(
            LOGIN, variable_values={"email": args.email, "password": args.password}
        )
    token = login["login"]["accessToken"]
    print(f"logged in as {args.email}")

    # 2. Upload as a GraphQL multipart request; the preflight header is the CSRF guard.
    headers = {"Authorization": f"Bearer {token}", "Apollo-Require-Preflight": "true"}
    content_type = mimetypes.guess_type(args.file.name)[0] or "application/octet-stream"
    upload = HTTPXAsyncTransport(url=http_url, headers=headers, timeout=120)
    async with Client(transport=upload) as session:
        file = FileVar(str(args.file), content_type=content_type)
        result = await session.execute(UPLOAD, variable_values={"file": file}, upload_files=True)
    document = result["uploadDocument"]
    print(f"uploaded {document['filename']}: {document['id']} {document['status']}")

    # 3 and 4 over one WebSocket: follow the document until READY, then stream an answer.
    socket = WebsocketsTransport(
        url=ws_url,
        init_payload={"authorization": f"Bearer {token}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    async with Client(transport=socket) as session:
        status = document["status"]
        async for event in session.subscribe(
            DOCUMENT_EVENTS, variable_values={"id": document["id"]}
        ):
            progress = event["documentEvents"]
            status = progress["status"]
            print(f"document {status} ({progress['pagesDone']}/{progress['pagesTotal']} pages)")
            if status == "FAILED":
                print(f"ingestion failed: {progress['error']}", file=sys.stderr)
                return 1
        if status != "READY":
            print(f"the document stream ended at {status}", file=sys.stderr)
            return 1

        async for event in session.subscribe(ANSWER, variable_values={"question": args.question}):
            answer: dict[str, Any] = event["answer"]
            kind = answer["__typename"]
            if kind == "AnswerSources":
                print(f"{len(answer['sources'])} sources found")
                print("answer: ", end="", flush=True)
            elif kind == "AnswerToken":
                print(answer["text"], end="", flush=True)  # each token as it arrives
            elif kind == "AnswerDone":
                print()
                for citation in answer["citations"]:
                    print(f"[{citation['number']}] {citation['filename']}, page {citation['page']}")
            elif kind == "AnswerError":
                print(f"\nanswer failed: {answer['code']}: {answer['message']}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(options())))
    except TransportQueryError as error:  # a GraphQL error: say its code and message
        first = (error.errors or [{}])[0]
        code = first.get("extensions", {}).get("code", "ERROR")
        sys.exit(f"error: {code}: {first.get('message', error)}")
