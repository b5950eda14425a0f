"""Search through the API: real rankings from the stand-in's hashed bag-of-words embeddings,
`k`, input errors, Ollama failures, and the HNSW index in the query plan."""

from __future__ import annotations

import math
import uuid

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.repositories import chunks, search_sql
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.ollama_standin import StandinState, embed_text
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error, upload_ok
from tests.support.vector_index import build_index, hnsw_scan

SEARCH = (
    "query($q: String!, $k: Int) { search(query: $q, k: $k, mode: VECTOR) "
    "{ score text page charStart charEnd document { id filename } } }"
)

LIBRARY = {
    "astronomy.pdf": [
        "Jupiter has dozens of moons. Europa hides an ocean under its ice crust, and "
        "Ganymede is the largest moon in the solar system, bigger than the planet Mercury.",
        "A reflecting telescope gathers light with a curved mirror. The wider its aperture, "
        "the fainter the galaxies and nebulae an observer can resolve at night.",
        "Comets are frozen lumps of dust and ice. Near the sun they grow a glowing coma "
        "and a long tail that always points away from the sun.",
    ],
    "kitchen.pdf": [
        "A sourdough starter is flour and water fermented by wild yeast. Feed the starter "
        "daily, then mix it with flour, water and salt to bake a crusty loaf of bread.",
        "Risotto is made with arborio rice toasted in butter, then cooked slowly while "
        "ladles of hot broth are stirred in until the grains turn creamy.",
        "Espresso needs finely ground coffee beans. A good grinder and fresh beans give "
        "a thick golden crema on top of the shot.",
    ],
    "sailing.pdf": [
        "The bowline knot makes a fixed loop at the end of a rope. Sailors tie it to "
        "secure a mooring line to a cleat or a ring.",
        "A spinnaker is a large balloon sail flown when sailing downwind. Trim its sheet "
        "so the luff just curls in the breeze.",
        "To anchor, let out chain or rode at least five times the depth of the water. "
        "That scope lets the anchor dig into the seabed and hold the boat.",
    ],
}

QUERIES = [
    ("Which moon of Jupiter hides an ocean under its ice?", "astronomy.pdf", 1),
    ("telescope mirror aperture for faint galaxies", "astronomy.pdf", 2),
    ("why does a comet tail point away from the sun", "astronomy.pdf", 3),
    ("how do I feed a sourdough starter and bake bread", "kitchen.pdf", 1),
    ("creamy arborio rice with broth", "kitchen.pdf", 2),
    ("grinder and coffee beans for espresso crema", "kitchen.pdf", 3),
    ("how to tie a bowline knot loop in a rope", "sailing.pdf", 1),
    ("trim the spinnaker sheet downwind", "sailing.pdf", 2),
    ("how much anchor chain scope for the depth of water", "sailing.pdf", 3),
]


async def search(gql: GraphQLClient, token: str, query: str, k: int | None = None) -> list[Json]:
    variables: Json = {"q": query} if k is None else {"q": query, "k": k}
    data = await gql.data(SEARCH, variables, token=token)
    hits: list[Json] = data["search"]
    return hits


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # both are unit vectors


async def test_search_ranks_the_right_page_first(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    assert await search(gql, token, "anything at all") == [], "no documents, no hits"

    ids = {}
    for filename, pages in LIBRARY.items():
        doc = await upload_ok(gql, filename, make_pdf(pages), token)
        assert doc["chunkCount"] == len(pages)  # short pages: one chunk each
        ids[filename] = doc["id"]
    total_chunks = sum(len(pages) for pages in LIBRARY.values())

    for query, filename, page in QUERIES:
        hits = await search(gql, token, query, k=3)
        assert len(hits) == 3
        best = hits[0]
        assert (best["document"]["filename"], best["page"]) == (filename, page), (query, hits)
        assert best["document"]["id"] == ids[filename]
        assert 0 < best["score"] <= 1
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True), "best first"
        assert all(-1 <= s <= 1 for s in scores)
        assert best["score"] > hits[1]["score"], "the right page wins clearly"

    # Every chunk, ranked exactly as the cosine similarity of the embeddings says.
    query = "ice and dust near the sun"
    hits = await search(gql, token, query, k=50)
    assert len(hits) == total_chunks
    dim = settings.embed_dim
    q = embed_text(query, dim)
    for hit in hits:
        expected = cosine(q, embed_text(hit["text"], dim))
        assert math.isclose(hit["score"], expected, abs_tol=1e-5), (hit, expected)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({(h["document"]["id"], h["page"], h["charStart"]) for h in hits}) == total_chunks

    # `k` is respected; the query's vector is the one kept from the search above.
    embeds = ollama.embed_requests
    for k in (1, 2, 5, total_chunks):
        top = await search(gql, token, query, k=k)
        assert [(h["document"]["id"], h["page"]) for h in top] == [
            (h["document"]["id"], h["page"]) for h in hits[:k]
        ]
    assert len(await search(gql, token, query)) == 5, "k defaults to 5"
    assert ollama.embed_requests == embeds, "embedded once, by the first search"

    # A page's exact text finds that page with a score of 1; the passage text and offsets
    # are the stored chunk's.
    text = LIBRARY["sailing.pdf"][2]
    best = (await search(gql, token, text, k=1))[0]
    assert (best["document"]["filename"], best["page"]) == ("sailing.pdf", 3)
    assert math.isclose(best["score"], 1.0, abs_tol=1e-5)
    assert " ".join(best["text"].split()) == " ".join(text.split())
    assert (best["charStart"], best["charEnd"]) == (0, len(best["text"]))


async def test_search_input_errors_and_upstream_failures(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_ok(gql, "a.pdf", make_pdf(["Bread needs flour, water and salt."]), token)
    embeds = ollama.embed_requests

    bad: list[tuple[str, int, tuple[str, ...]]] = [
        ("bread", 0, ("k must be between 1 and 50",)),
        ("bread", -3, ("k must be between 1 and 50",)),
        ("bread", 51, ("k must be between 1 and 50",)),
        ("bread", 10_000, ("k must be between 1 and 50",)),
        ("", 5, ("query is empty",)),
        (" \n\t ", 5, ("query is empty",)),
        ("bread " * 1000, 5, ("longer than 4000",)),
    ]
    for query, k, fragments in bad:
        body = await gql.execute(SEARCH, {"q": query, "k": k}, token=token)
        assert body["data"] is None
        assert_error(body, "BAD_USER_INPUT", *fragments)
    assert ollama.embed_requests == embeds, "bad input is refused before embedding"

    body = await gql.execute(SEARCH, {"q": "bread"}, token=None)
    assert_error(body, "UNAUTHENTICATED", "Authorization")

    ollama.fail_status = 500
    ollama.fail_message = "embedding model crashed"
    body = await gql.execute(SEARCH, {"q": "bread", "k": 3}, token=token)
    assert body["data"] is None
    message = assert_error(body, "UPSTREAM_ERROR", "Ollama", "embedding model crashed")
    assert "500" in message

    ollama.fail_status = None
    hits = await search(gql, token, "bread flour", k=3)
    assert [h["document"]["filename"] for h in hits] == ["a.pdf"], "works again"


async def test_a_repeated_query_is_embedded_once_per_workspace(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    alice = await sign_up(gql, inbox, "alice@example.com")
    bob = await sign_up(gql, inbox, "bob@example.com")
    for token in (alice, bob):
        for filename, pages in LIBRARY.items():
            await upload_ok(gql, filename, make_pdf(pages), token)
    query = "telescope mirror aperture for faint galaxies"
    hybrid = SEARCH.replace("mode: VECTOR", "mode: HYBRID")
    before = ollama.embed_requests
    first = await search(gql, alice, query, k=3)
    # The same words again, then in another mode with another k: the kept vector.
    again = await search(gql, alice, query, k=3)
    fused = (await gql.data(hybrid, {"q": query, "k": 5}, token=alice))["search"]
    assert ollama.embed_requests == before + 1
    assert again == first and first[0]["page"] == 2 and fused[0]["page"] == 2
    # Another workspace does not share it (a faster answer would tell it someone asked).
    assert (await search(gql, bob, query, k=3))[0]["page"] == 2
    assert ollama.embed_requests == before + 2

    # Off: every search embeds its query.
    off = settings.model_copy(update={"query_embedding_cache_size": 0})
    async with serve_client(off) as plain:
        before = ollama.embed_requests  # (after the start-up check's own embedding)
        for _ in range(2):
            assert (await search(plain, alice, query, k=3))[0]["page"] == 2
        assert ollama.embed_requests == before + 2


async def test_nearest_neighbour_query_uses_the_hnsw_index(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_ok(gql, "kitchen.pdf", make_pdf(LIBRARY["kitchen.pdf"]), token)
    query_vector = embed_text("coffee beans", settings.embed_dim)
    # With three rows a sequential scan and a sort are cheapest; forbid them, so the plan
    # shows whether the index *can* serve the ORDER BY (right operator, right opclass).
    no_seqscan_no_sort = ("SET LOCAL enable_seqscan = off", "SET LOCAL enable_sort = off")

    # The shape of a search, by hand: the nearest chunks of one workspace.
    async with connect(settings) as conn:
        workspace: uuid.UUID = await conn.fetchval("SELECT workspace_id FROM document")
    await build_index(settings, workspace)  # as the `vector_index` job does past the threshold
    async with connect(settings) as conn, conn.transaction():
        for setting in no_seqscan_no_sort:
            await conn.execute(setting)
        sql = (
            "SELECT id FROM chunk WHERE workspace_id = $1 ORDER BY embedding <=> $2::vector LIMIT 5"
        )
        vector = "[" + ",".join(map(str, query_vector)) + "]"
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, workspace, vector))
        assert hnsw_scan(workspace) in plan, plan
        assert len(await conn.fetch(sql, workspace, vector)) == 3

    # The repository's own statement, as `vector_ranked` builds it, explained in its transaction.
    db = Database(settings.database_url or "")
    try:
        async with db.driver_transaction(workspace) as conn:
            for setting in no_seqscan_no_sort:
                await conn.execute(setting)
            # Three chunks are above max_rows 0: the HNSW path (see test_search_strategy).
            statements = search_sql.vector_statements(
                workspace_id=workspace,
                embedding=query_vector,
                limit=5,
                ef_search=100,
                exact=search_sql.ExactScan(max_rows=0),
            )
            ranked = await chunks.vector_ranked(conn, statements)
            assert ranked.strategy is search_sql.VectorStrategy.HNSW
            pages = await chunks.load(
                conn, workspace_id=workspace, ids=[ranked.rows[0][0]], query="espresso"
            )
            assert [row.page for row in pages.values()] == [3], "the espresso page"
            statement = statements.hnsw
            rows = await conn.fetch("EXPLAIN " + statement.sql, *statement.args)
    finally:
        await db.dispose()
    plan = "\n".join(r[0] for r in rows)
    assert hnsw_scan(workspace) in plan, plan


async def test_diversity_brings_a_different_passage_up(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    copy = "Kestrels hover over the dunes and kestrels hunt voles in the dunes at dawn."
    for n in range(3):  # the same passage in three documents
        await upload_ok(gql, f"copy{n}.pdf", make_pdf([copy]), token)
    await upload_ok(gql, "other.pdf", make_pdf(["Kestrels nest on cliffs near harbours."]), token)
    query = (
        'query($d: Float) { search(query: "kestrels dunes", k: 2, mode: VECTOR, diversity: $d)'
        " { document { filename } } }"
    )
    plain = await gql.data(query, {"d": None}, token=token)
    assert [h["document"]["filename"] for h in plain["search"]][1].startswith("copy")
    diverse = await gql.data(query, {"d": 0.7}, token=token)
    names = [h["document"]["filename"] for h in diverse["search"]]
    assert names[0].startswith("copy") and names[1] == "other.pdf", names
    body = await gql.execute(query, {"d": 1.5}, token=token)
    assert_error(body, "BAD_USER_INPUT", "diversity", "between 0 and 1")


async def test_snippets_are_highlighted_when_selected_through_a_fragment(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_ok(gql, "birds.pdf", make_pdf(["Kestrels hover over the dunes at dawn."]), token)
    query = (
        'query { search(query: "kestrels", k: 1, mode: KEYWORD) { ...Hit } } '
        "fragment Hit on SearchHit { page snippet }"
    )
    hits = (await gql.data(query, token=token))["search"]
    assert "**Kestrels**" in hits[0]["snippet"], hits
    plain = await gql.data(
        '{ search(query: "kestrels", k: 1, mode: KEYWORD) { page } }', token=token
    )
    assert plain["search"] == [{"page": 1}]
