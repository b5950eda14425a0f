"""The main job end to end through the API: sign up, upload, search."""

from __future__ import annotations

from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.pdfs import make_pdf
from tests.support.smtp import Inbox


async def test_sign_up_upload_search(gql: GraphQLClient, inbox: Inbox) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    me = await gql.data("{ me { id email } }", token=token)
    assert me["me"]["email"] == "ada@example.com"

    pdf = make_pdf(
        [
            "PostgreSQL stores vectors with the pgvector extension and an HNSW index.",
            "Sourdough bread needs flour, water, salt and a lively starter.",
        ]
    )
    response = await gql.upload("notes.pdf", pdf, token=token)
    body = response.json()
    assert "errors" not in body, body
    doc = body["data"]["uploadDocument"]
    assert doc["pageCount"] == 2
    assert doc["chunkCount"] == 2
    assert doc["status"] == "READY"
    assert doc["duplicate"] is False

    hits = await gql.data(
        "query($q: String!) { search(query: $q, k: 2) "
        "{ score page text document { id filename } } }",
        {"q": "how do I bake bread with a starter?"},
        token=token,
    )
    first = hits["search"][0]
    assert first["page"] == 2
    assert first["document"]["filename"] == "notes.pdf"
