"""Hybrid retrieval through the API: identifiers stay findable, questions match on any lexeme,
fusion beats each single mode on a labelled set, filters in every mode (with pgvector's
iterative index scan), adjacent chunks merged into one hit, and filters that never reach
another workspace.

Embeddings are the stand-in's hashed bag of words (256 dimensions, so a few words collide):
VECTOR matches exact words, KEYWORD matches stemmed lexemes; neither is a paraphrase model.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import make_url

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.ollama_standin import StandinState, embed_text, tokenize
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import upload_ok
from tests.support.vector_index import build_index, hnsw_scan

MODES = ("VECTOR", "KEYWORD", "HYBRID")

HIT_FIELDS = (
    "score vectorRank keywordRank text snippet page charStart charEnd "
    "document { id filename collectionId }"
)
CREATE_COLLECTION = "mutation($n: String!) { createCollection(name: $n) { id } }"


@dataclass(frozen=True, slots=True)
class Search:
    """One `search` call's arguments."""

    query: str
    mode: str = "HYBRID"
    k: int = 5
    filter: Json | None = None
    collections: list[str] | None = None


async def search_many(
    gql: GraphQLClient, token: str, searches: Sequence[Search]
) -> list[list[Json]]:
    """Runs the searches as aliased fields of one GraphQL request (one round trip; the server
    resolves them concurrently); returns each one's hits, in order."""
    params: list[str] = []
    fields: list[str] = []
    variables: Json = {}
    for i, s in enumerate(searches):
        assert s.mode in MODES
        params.append(f"$q{i}: String!, $k{i}: Int, $f{i}: SearchFilter, $c{i}: [ID!]")
        fields.append(
            f"s{i}: search(query: $q{i}, k: $k{i}, mode: {s.mode}, filter: $f{i}, "
            f"collectionIds: $c{i}) {{ {HIT_FIELDS} }}"
        )
        variables |= {f"q{i}": s.query, f"k{i}": s.k, f"f{i}": s.filter, f"c{i}": s.collections}
    document = f"query({', '.join(params)}) {{ {' '.join(fields)} }}"
    data = await gql.data(document, variables, token=token)
    return [data[f"s{i}"] for i in range(len(searches))]


async def search(
    gql: GraphQLClient,
    token: str,
    query: str,
    mode: str = "HYBRID",
    *,
    k: int = 5,
    filter: Json | None = None,
    collections: list[str] | None = None,
) -> list[Json]:
    (hits,) = await search_many(gql, token, [Search(query, mode, k, filter, collections)])
    return hits


# Three identifiers, each next to a page of the same vocabulary that does not define it.
# (latex.pdf says "scale", not "size": at 256 dimensions "size" hashes onto the dimension of
# "declarefixedfont" with the opposite sign, and would cancel it in the page's embedding.)
LIBRARY = {
    "latex.pdf": [
        r"\DeclareFixedFont{\bigsf}{T1}{phv}{b}{n}{1.5cm} defines the command \bigsf that "
        "selects one fixed font at once: encoding, family, series, shape and scale. It is "
        "faster than changing the font attributes one by one.",
        r"\DeclareFontFamily and \DeclareFontShape tell LaTeX which font families and shapes "
        "exist. The font selection scheme picks a font from these declarations whenever a "
        "document changes its font family, series or shape.",
    ],
    "r-io.pdf": [
        "read.fwf reads a table of fixed width formatted data into a data frame. Give the "
        "widths argument the width of each field, in characters.",
        "read.csv and read.table read delimited text files into a data frame. Use read.csv "
        "for comma separated values and set header to TRUE when the first line names the "
        "columns.",
    ],
    "build.pdf": [
        "Pass --disable-nls to configure to build without native language support: no "
        "message catalogs are installed and gettext is not needed.",
        "Pass --enable-shared to configure to build shared libraries, or --disable-static to "
        "skip the static ones. Use --prefix to choose where make install puts the files.",
    ],
    "garden.pdf": [
        "Water tomatoes deeply twice a week. Water at the base, not on the leaves, and water "
        "early in the morning; too much water splits the fruit, too little water curls the "
        "leaves.",
        "Prune roses in late winter, just before the buds swell. Cut above an outward facing "
        "bud and remove dead or crossing canes.",
    ],
    "bakery.pdf": [
        "Feed a sourdough starter equal weights of flour and water every day. A lively "
        "starter doubles within six hours and smells pleasantly sour.",
        "Bake the loaf on a preheated stone with steam for the first twenty minutes; the "
        "steam keeps the crust soft long enough for the bread to rise.",
    ],
    "sky.pdf": [
        "Comets are frozen lumps of dust and ice. Near the sun they grow a glowing coma and "
        "a long tail that always points away from the sun.",
        "A reflecting telescope gathers light with a curved mirror. The wider its aperture, "
        "the fainter the galaxies an observer can resolve.",
    ],
}

# (question, the page that answers it, how the top hit's snippet marks the identifier)
IDENTIFIER_QUESTIONS = [
    (r"what does \DeclareFixedFont do?", ("latex.pdf", 1), ("**DeclareFixedFont**",)),
    ("how to use read.fwf", ("r-io.pdf", 1), ("**read.fwf**",)),
    # The parser splits `disable-nls` into the compound and its parts, each highlighted.
    ("what is --disable-nls for", ("build.pdf", 1), ("**disable**", "**nls**")),
]

# Identifiers and paraphrases. VECTOR misses the loaf question (no word in common without
# stemming); fusion finds it by its keywords.
LABELLED = [
    (r"what does \DeclareFixedFont do?", ("latex.pdf", 1)),
    ("how to use read.fwf", ("r-io.pdf", 1)),
    ("what is --disable-nls for", ("build.pdf", 1)),
    ("which configure option leaves out the message catalogs", ("build.pdf", 1)),
    ("how much water and flour does a sourdough starter need", ("bakery.pdf", 1)),
    ("baking loaves with steamed crusts", ("bakery.pdf", 2)),
    ("why do comets have tails", ("sky.pdf", 1)),
    ("pruning rose bushes in winter", ("garden.pdf", 2)),
]


def place(hit: Json) -> tuple[str, int]:
    return hit["document"]["filename"], hit["page"]


def rank_of(hits: Sequence[Json], where: tuple[str, int]) -> int | None:
    """1-based position of the page `where` in `hits`, None when absent."""
    return next((i for i, hit in enumerate(hits, start=1) if place(hit) == where), None)


def check_hits(hits: Sequence[Json], mode: str, fusion: Settings | None = None) -> None:
    """What every result list must satisfy: best first, and ranks that say how a hit was found.

    With `fusion` settings, also that HYBRID scores are Σ wᵢ/(RRF_K + rankᵢ) (no merged hits).
    """
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True), "best first"
    for hit in hits:
        v, kw = hit["vectorRank"], hit["keywordRank"]
        if mode == "VECTOR":
            assert kw is None and isinstance(v, int) and v >= 1, hit
            assert -1 <= hit["score"] <= 1, hit
        elif mode == "KEYWORD":
            assert v is None and isinstance(kw, int) and kw >= 1, hit
            assert "**" in hit["snippet"], hit  # every keyword hit matched some lexeme
        else:
            assert v is not None or kw is not None, hit
            if kw is None:  # (with fewer matching chunks than the keyword list's depth)
                assert "**" not in hit["snippet"], "no lexeme matched, nothing to mark"
            if fusion is not None:
                weighted = ((fusion.hybrid_vector_weight, v), (fusion.hybrid_keyword_weight, kw))
                fused = sum(w / (fusion.rrf_k + r) for w, r in weighted if r is not None)
                assert math.isclose(hit["score"], fused, rel_tol=1e-9), hit
    if mode != "HYBRID" and hits:
        # The list's own order (a merged hit keeps the better rank, so ranks may skip).
        key = "vectorRank" if mode == "VECTOR" else "keywordRank"
        ranks = [hit[key] for hit in hits]
        assert ranks[0] == 1 and ranks == sorted(set(ranks)), ranks


async def upload_library(gql: GraphQLClient, token: str) -> dict[str, str]:
    ids = {}
    for filename, pages in LIBRARY.items():
        doc = await upload_ok(gql, filename, make_pdf(pages), token)
        assert doc["chunkCount"] == len(pages)  # short pages: one chunk each
        ids[filename] = doc["id"]
    return ids


async def test_identifiers_stay_findable(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_library(gql, token)
    searches = [Search(q, mode, k=12) for q, _, _ in IDENTIFIER_QUESTIONS for mode in MODES]
    stop_words = [Search("what is it", mode) for mode in ("KEYWORD", "HYBRID")]
    *results, keyword_stop, hybrid_stop = await search_many(gql, token, searches + stop_words)
    for n, (question, answer, marks) in enumerate(IDENTIFIER_QUESTIONS):
        by_mode = dict(zip(MODES, results[n * len(MODES) : (n + 1) * len(MODES)], strict=True))
        for mode, hits in by_mode.items():
            check_hits(hits, mode, settings)
        for mode in ("KEYWORD", "HYBRID"):
            top = by_mode[mode][0]
            assert place(top) == answer, (question, mode, by_mode[mode])
            for mark in marks:
                assert mark in top["snippet"], (question, mode, top["snippet"])
        assert len(by_mode["KEYWORD"]) < len(by_mode["VECTOR"]), "only pages with a lexeme"
        # A hybrid hit carries the page's place in each single-mode list.
        top = by_mode["HYBRID"][0]
        assert top["keywordRank"] == rank_of(by_mode["KEYWORD"], answer) == 1
        assert top["vectorRank"] == rank_of(by_mode["VECTOR"], answer)
        # One passage: its text and offsets do not depend on the mode.
        vector_hit = by_mode["VECTOR"][top["vectorRank"] - 1]
        for field in ("text", "charStart", "charEnd"):
            assert vector_hit[field] == top[field] == by_mode["KEYWORD"][0][field]

    # A query of stop words only has no lexeme: KEYWORD finds nothing, HYBRID is VECTOR's list.
    assert keyword_stop == []
    assert len(hybrid_stop) == 5
    check_hits(hybrid_stop, "HYBRID", settings)
    assert all(hit["keywordRank"] is None for hit in hybrid_stop)
    assert [hit["vectorRank"] for hit in hybrid_stop] == [1, 2, 3, 4, 5]


async def test_questions_match_on_any_lexeme(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_library(gql, token)
    question = (
        "Could you please explain, in simple terms, whether my grandfather's dusty old "
        "telescope with a cracked mirror is worth repairing before summer?"
    )
    # Most of its words are on no page: requiring all of them (plainto_tsquery) finds nothing.
    async with connect(settings) as conn:
        all_words = await conn.fetchval(
            "SELECT count(*) FROM chunk WHERE tsv @@ plainto_tsquery('english', $1)", question
        )
    assert all_words == 0
    keyword, hybrid = await search_many(
        gql, token, [Search(question, "KEYWORD"), Search(question, "HYBRID")]
    )
    check_hits(keyword, "KEYWORD")
    assert [place(hit) for hit in keyword] == [("sky.pdf", 2)], keyword
    assert "**telescope**" in keyword[0]["snippet"] and "**mirror**" in keyword[0]["snippet"]
    # The hashed bag-of-words vectors share no word of this question with most pages: their
    # distances tie at 1.0 (ties go by id) and VECTOR knows little. HYBRID keeps the keyword
    # hit within its top two, just behind the one page VECTOR finds similar.
    assert ("sky.pdf", 2) in [place(hit) for hit in hybrid[:2]], hybrid


async def test_hybrid_beats_each_single_mode_on_a_labelled_set(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_library(gql, token)
    pages = sum(len(p) for p in LIBRARY.values())
    searches = [Search(q, mode, k=pages) for mode in MODES for q, _ in LABELLED]
    results = iter(await search_many(gql, token, searches))
    mrr: dict[str, float] = {}
    ranks: dict[str, list[int | None]] = {}
    for mode in MODES:
        ranks[mode] = []
        for _, answer in LABELLED:
            hits = next(results)
            if mode == "VECTOR":
                assert len(hits) == pages, "every page has a distance"
            check_hits(hits, mode, settings)
            ranks[mode].append(rank_of(hits, answer))
        mrr[mode] = sum(1 / r for r in ranks[mode] if r) / len(LABELLED)
    context = (mrr, ranks)
    # The stand-in embeds a bag of unstemmed words, so on this small set Okapi BM25 (stemmed,
    # IDF-weighted) answers every question and fusion can only add the vector leg's misses;
    # the real model's eval (`rag-gql eval`) is where fusion has to beat both legs.
    assert mrr["KEYWORD"] >= mrr["VECTOR"], context
    assert mrr["HYBRID"] > mrr["VECTOR"], context
    # The vector leg misses a question the keyword leg gets right: the set exercises fusion.
    pairs = list(zip(ranks["VECTOR"], ranks["KEYWORD"], strict=True))
    assert any(v != 1 and kw == 1 for v, kw in pairs), context
    assert all(r is not None and r <= 2 for r in ranks["HYBRID"]), context


FILTER_PAGES = {
    "a.pdf": [
        "Lantern manual, part one: fill the lantern with lamp oil up to the mark.",
        "Lantern manual, part two: trim the lantern wick flat before lighting it.",
        "Lantern manual, part three: clean the lantern glass with warm soapy water.",
    ],
    "b.pdf": [
        "Lantern recipes, part one: candied ginger for a night of lantern carving.",
        "Lantern recipes, part two: pumpkin soup from what the lantern carving leaves.",
        "Lantern recipes, part three: roasted seeds eaten by lantern light.",
    ],
    "c.pdf": [
        "Lantern festival, part one: paper lanterns rise over the river at dusk.",
        "Lantern festival, part two: every lantern carries a wish written in ink.",
        "Lantern festival, part three: the last lantern is lit by the oldest guest.",
    ],
}


async def test_filters_in_every_mode(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    manuals, recipes = [
        (await gql.data(CREATE_COLLECTION, {"n": name}, token=token))["createCollection"]["id"]
        for name in ("Manuals", "Recipes")
    ]
    collection_of = {"a.pdf": manuals, "b.pdf": recipes, "c.pdf": None}
    ids: dict[str, str] = {}
    for filename, pages in FILTER_PAGES.items():
        response = await gql.upload(
            filename, make_pdf(pages), token=token, collection=collection_of[filename]
        )
        ids[filename] = response.json()["data"]["uploadDocument"]["id"]

    # a.pdf is from 2020, b.pdf from exactly 2022-01-01, c.pdf from today.
    boundary = datetime(2022, 1, 1, tzinfo=UTC)
    async with connect(settings) as conn:
        for filename, created in (("a.pdf", datetime(2020, 6, 1, tzinfo=UTC)), ("b.pdf", boundary)):
            await conn.execute(
                "UPDATE document SET created_at = $1 WHERE id = $2",
                created,
                uuid.UUID(ids[filename]),
            )

    every = {(f, p) for f, pages in FILTER_PAGES.items() for p in range(1, len(pages) + 1)}
    a, b, c = ({(f, p) for f, p in every if f == name} for name in FILTER_PAGES)
    cases: list[tuple[Json | None, list[str] | None, set[tuple[str, int]]]] = [
        (None, None, every),
        ({"documentIds": [ids["a.pdf"], ids["c.pdf"]]}, None, a | c),
        ({"filenames": ["b.pdf", "nope.pdf"]}, None, b),
        ({"pageFrom": 2, "pageTo": 2}, None, {(f, 2) for f in FILTER_PAGES}),
        ({"pageTo": 1, "filenames": ["a.pdf", "c.pdf"]}, None, {("a.pdf", 1), ("c.pdf", 1)}),
        (
            {"createdAfter": "2021-01-01T00:00:00Z", "createdBefore": "2023-01-01T00:00:00Z"},
            None,
            b,
        ),
        # createdAfter is inclusive, createdBefore exclusive: [after, before).
        ({"createdAfter": boundary.isoformat()}, None, b | c),
        ({"createdBefore": boundary.isoformat()}, None, a),
        ({"collectionIds": [manuals]}, None, a),
        (None, [recipes], b),
        # The top-level collectionIds narrows filter.collectionIds: the intersection.
        ({"collectionIds": [manuals, recipes]}, [recipes], b),
        ({"collectionIds": [manuals]}, [recipes], set()),
        ({"collectionIds": []}, None, set()),
        # Conditions combine with AND; unknown and malformed ids match nothing.
        ({"documentIds": [ids["a.pdf"]], "filenames": ["b.pdf"]}, None, set()),
        ({"documentIds": [str(uuid.uuid4()), "not-an-id"]}, None, set()),
    ]
    # k one above the number of matching pages: a page outside the filter would show.
    searches = [
        Search("lantern", mode, len(expected) + 1, filter, collections)
        for mode in MODES
        for filter, collections, expected in cases
    ]
    # k results when more than k pages match.
    limited = [Search("lantern", mode, 2, {"pageFrom": 2}) for mode in MODES]
    *results, v2, k2, h2 = await search_many(gql, token, searches + limited)
    for s, hits, (_, _, expected) in zip(searches, results, cases * len(MODES), strict=True):
        check_hits(hits, s.mode)
        assert {place(hit) for hit in hits} == expected, (s, hits)
        assert len(hits) == len(expected), s
    for mode, hits in zip(MODES, (v2, k2, h2), strict=True):
        check_hits(hits, mode)
        assert len(hits) == 2 and all(hit["page"] >= 2 for hit in hits), (mode, hits)


async def test_filtered_vector_search_reads_past_the_first_index_candidates(
    inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    """VECTOR mode searches the HNSW index with `hnsw.ef_search` = max(setting, k), here k = 3:
    the 3 nearest chunks are all filtered out, and pgvector's iterative scan must keep reading
    the index until k chunks pass the filter. (HYBRID reads 50 candidates; checked as well.)"""
    assert settings.database_url is not None
    database = make_url(settings.database_url).database
    async with connect(settings) as conn:
        # Make the planner take the HNSW index even for a handful of rows (as at scale).
        await conn.execute(f'ALTER DATABASE "{database}" SET enable_seqscan = off')
        await conn.execute(f'ALTER DATABASE "{database}" SET enable_sort = off')
    # exact_search_max_rows 0: the HNSW path for a handful of chunks too.
    narrow = settings.model_copy(
        update={"hnsw_ef_search": 1, "exact_search_max_rows": 0, "exact_search_max_share": 0.0}
    )
    near_pages = [f"Oil lamp wick number {i}: trim the wick, fill the oil lamp." for i in range(12)]
    far_pages = [
        f"Chapter {i} of the ledger mentions an oil lamp once, among {word} and paperwork."
        for i, word in enumerate(["invoices", "receipts", "contracts", "stamps"], start=1)
    ]
    query = "oil lamp wick"
    async with serve_client(narrow) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        await upload_ok(gql, "near.pdf", make_pdf(near_pages), token)
        far = await upload_ok(gql, "far.pdf", make_pdf(far_pages), token)

        # The premise: the k = 3 nearest chunks are near.pdf's, so an index scan that stops
        # after ef_search candidates leaves nothing of far.pdf.
        vector = "[" + ",".join(map(str, embed_text(query, settings.embed_dim))) + "]"
        sql = (
            "SELECT id FROM chunk WHERE workspace_id = $1 AND document_id = $2 "
            "ORDER BY embedding <=> $3::vector LIMIT 3"
        )
        async with connect(settings) as conn:
            workspace = await conn.fetchval("SELECT workspace_id FROM document LIMIT 1")
        await build_index(settings, workspace)
        async with connect(settings) as conn, conn.transaction():
            await conn.execute("SET LOCAL hnsw.ef_search = 3")
            await conn.execute("SET LOCAL hnsw.iterative_scan = off")
            args = (
                await conn.fetchval("SELECT workspace_id FROM document LIMIT 1"),
                uuid.UUID(far["id"]),
                vector,
            )
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
            assert hnsw_scan(workspace) in plan, plan
            assert len(await conn.fetch(sql, *args)) < 3

        filters: list[Json | None] = [{"documentIds": [far["id"]]}, {"filenames": ["far.pdf"]}]
        searches = [Search(query, mode, 3, f) for mode in MODES for f in filters]
        unfiltered, *results = await search_many(
            gql, token, [Search(query, "VECTOR", 3), *searches]
        )
    assert {hit["document"]["filename"] for hit in unfiltered} == {"near.pdf"}
    for s, hits in zip(searches, results, strict=True):
        check_hits(hits, s.mode)
        assert len(hits) == 3, (s, hits)
        assert {hit["document"]["filename"] for hit in hits} == {"far.pdf"}, s


# Sentences with one distinct noun each, so a query can pick out single chunks.
# fmt: off
NOUNS = (
    "albatross", "badger", "camel", "dolphin", "eagle", "ferret", "gazelle", "heron", "iguana",
    "jackal", "koala", "lemur", "marmot", "narwhal", "ocelot", "pelican", "quokka", "raccoon",
    "salamander", "tapir", "urchin", "vulture", "walrus", "yak", "zebra", "armadillo", "bison",
    "cheetah", "dingo", "emu", "flamingo", "gecko", "hyena", "impala",
)
# fmt: on


def long_page(nouns: Sequence[str]) -> str:
    return " ".join(
        f"Note {i}: the {noun} rests beside the old stone bridge at noon."
        for i, noun in enumerate(nouns, start=1)
    )


async def page_chunks(settings: Settings, document_id: str) -> list[Any]:
    """The document's chunks in order: page, ordinal, char_start, char_end, text."""
    async with connect(settings) as conn:
        rows: list[Any] = await conn.fetch(
            "SELECT page, ordinal, char_start, char_end, text FROM chunk "
            "WHERE document_id = $1 ORDER BY ordinal",
            uuid.UUID(document_id),
        )
    return rows


def only_in(rows: Sequence[Any], index: int) -> str:
    """A noun of NOUNS that is in chunk `rows[index]` and in no other chunk."""
    for noun in NOUNS:
        holders = [i for i, row in enumerate(rows) if noun in tokenize(row["text"])]
        if holders == [index]:
            return noun
    raise AssertionError(f"no noun only in chunk {index}")


def page_text(rows: Sequence[Any], page: int) -> str:
    """The page's normalized text, rebuilt from its chunks' texts and offsets."""
    on_page = [row for row in rows if row["page"] == page]
    chars = [" "] * max(row["char_end"] for row in on_page)
    for row in on_page:
        assert row["char_end"] - row["char_start"] == len(row["text"])
        chars[row["char_start"] : row["char_end"]] = row["text"]
    return "".join(chars)


def spans_overlap_or_touch(hits: Sequence[Json], rows: Sequence[Any]) -> list[Any]:
    """Pairs of hits on one page of one document that overlap or hold consecutive chunks."""
    starts = {(row["page"], row["char_start"]): row["ordinal"] for row in rows}
    ends = {(row["page"], row["char_end"]): row["ordinal"] for row in rows}
    bad = []
    for i, x in enumerate(hits):
        for y in hits[i + 1 :]:
            if (x["document"]["id"], x["page"]) != (y["document"]["id"], y["page"]):
                continue
            first, second = sorted((x, y), key=lambda hit: hit["charStart"])
            touching = (
                starts[(second["page"], second["charStart"])]
                - ends[(first["page"], first["charEnd"])]
                == 1
            )
            if second["charStart"] < first["charEnd"] or touching:
                bad.append(
                    (
                        (first["charStart"], first["charEnd"]),
                        (second["charStart"], second["charEnd"]),
                    )
                )
    return bad


async def test_adjacent_chunks_merge_into_one_hit(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    pages = [long_page(NOUNS[:24]), long_page(NOUNS[24:])]
    doc = await upload_ok(gql, "notes.pdf", make_pdf(pages), token)
    rows = await page_chunks(settings, doc["id"])
    first_page = [i for i, row in enumerate(rows) if row["page"] == 1]
    assert len(first_page) >= 4, "a long page: several chunks"
    assert [row["ordinal"] for row in rows] == list(range(rows[0]["ordinal"], len(rows)))
    text = page_text(rows, 1)

    # Two consecutive chunks in the middle of page 1, each picked out by a noun of its own.
    i = first_page[1]
    one, two = rows[i], rows[i + 1]
    assert one["char_end"] > two["char_start"], "consecutive chunks overlap"
    both = f"{only_in(rows, i)} {only_in(rows, i + 1)}"
    # The last chunk of page 1 and the first of page 2 are consecutive, but on two pages.
    last = first_page[-1]
    across = f"{only_in(rows, last)} {only_in(rows, last + 1)}"
    keyword, hybrid, keyword_across = await search_many(
        gql,
        token,
        [Search(both, "KEYWORD"), Search(both, "HYBRID"), Search(across, "KEYWORD")],
    )
    check_hits(keyword, "KEYWORD")
    check_hits(hybrid, "HYBRID")

    # Exactly two chunks match the words: one hit, spanning both, their overlap once.
    (hit,) = keyword
    assert (hit["page"], hit["charStart"], hit["charEnd"]) == (
        1,
        one["char_start"],
        two["char_end"],
    )
    assert hit["text"] == text[one["char_start"] : two["char_end"]]
    assert hit["text"].startswith(one["text"]) and hit["text"].endswith(two["text"])
    assert len(hit["text"]) < len(one["text"]) + len(two["text"])
    assert hit["keywordRank"] == 1

    # HYBRID: both chunks top each list; the best hit spans both (and whichever neighbours
    # made the candidate list), its text is the page's text over that span.
    top = hybrid[0]
    assert top["page"] == 1 and top["vectorRank"] == 1 and top["keywordRank"] == 1, top
    assert top["charStart"] <= one["char_start"] and top["charEnd"] >= two["char_end"], top
    assert top["text"] == text[top["charStart"] : top["charEnd"]]

    # Across pages: two hits, each citing its own page and its own chunk's text.
    assert sorted((h["page"], h["text"]) for h in keyword_across) == [
        (1, rows[last]["text"]),
        (2, rows[last + 1]["text"]),
    ]


async def one_long_page(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> tuple[str, list[Any]]:
    """Signs up ada@example.com with one long page (five chunks or more) ingested; returns
    her token and the chunks (`page_chunks`)."""
    token = await sign_up(gql, inbox, "ada@example.com")
    doc = await upload_ok(gql, "notes.pdf", make_pdf([long_page(NOUNS[:24])]), token)
    rows = await page_chunks(settings, doc["id"])
    assert len(rows) >= 5
    return token, rows


async def test_merged_hits_never_overlap(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token, rows = await one_long_page(gql, inbox, settings)
    # Three consecutive chunks; the middle one matches two words, its neighbours one each, so
    # it ranks first and each neighbour arrives after it.
    words = [noun for noun in NOUNS if noun in tokenize(rows[2]["text"])][:2]
    query = " ".join([only_in(rows, 1), *words, only_in(rows, 3)])
    keyword, hybrid = await search_many(
        gql, token, [Search(query, "KEYWORD"), Search(query, "HYBRID")]
    )
    assert keyword[0]["keywordRank"] == 1
    problems = {
        "keyword run of three": [(h["charStart"], h["charEnd"]) for h in keyword]
        if [(h["charStart"], h["charEnd"]) for h in keyword]
        != [(rows[1]["char_start"], rows[3]["char_end"])]
        else None,
        "keyword overlaps": spans_overlap_or_touch(keyword, rows),
        "hybrid overlaps": spans_overlap_or_touch(hybrid, rows),
    }
    assert not any(problems.values()), problems


async def test_merged_hits_still_leave_k_hits_each_highlighted(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    # Each list fetches 2k chunks, so a merge still leaves k hits (in every mode). Only the
    # first k chunks of the ranking are highlighted with the load; a hit that merging brings
    # up from further down gets its snippet afterwards.
    token, rows = await one_long_page(gql, inbox, settings)

    def unique(index: int) -> list[str]:
        return [
            noun
            for noun in NOUNS
            if [i for i, row in enumerate(rows) if noun in tokenize(row["text"])] == [index]
        ]

    first, second, far = unique(1), unique(2), only_in(rows, 4)
    assert len(first) >= 2 and len(second) >= 2, (first, second)
    # Chunks 1 and 2 match several words and rank 1 and 2 (one merged hit); chunk 4 matches
    # one word: third in the ranking, second hit of k = 2.
    query = " ".join([*first, *second, far])
    (hits,) = await search_many(gql, token, [Search(query, "KEYWORD", k=2)])
    check_hits(hits, "KEYWORD")
    assert [(h["charStart"], h["charEnd"]) for h in hits] == [
        (rows[1]["char_start"], rows[2]["char_end"]),
        (rows[4]["char_start"], rows[4]["char_end"]),
    ], hits
    assert f"**{far}**" in hits[1]["snippet"], hits[1]


async def test_filters_never_reach_another_workspace(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    alice = await sign_up(gql, inbox, "alice@example.com")
    bob = await sign_up(gql, inbox, "bob@example.com")
    vault = (await gql.data(CREATE_COLLECTION, {"n": "Vault"}, token=alice))["createCollection"]
    secret_pages = [
        "Project Nightingale: the zeppelin hangar combination is amber walrus seventeen.",
        "Nightingale budget: forty thousand florins for helium and the walrus mascot.",
    ]
    response = await gql.upload(
        "secret.pdf", make_pdf(secret_pages), token=alice, collection=vault["id"]
    )
    secret = response.json()["data"]["uploadDocument"]
    shared_a = await upload_ok(gql, "shared.pdf", make_pdf(["Nightingale walrus notes."]), alice)
    shared_b = await upload_ok(
        gql, "shared.pdf", make_pdf(["Bob's notes on a walrus at the zoo."]), bob
    )
    a_ids = [secret["id"], shared_a["id"]]
    query = "Nightingale zeppelin walrus combination"

    cases: list[tuple[Json | None, list[str] | None, list[str]]] = [
        ({"documentIds": a_ids}, None, []),
        ({"documentIds": a_ids, "pageFrom": 1, "createdAfter": "2000-01-01T00:00:00Z"}, None, []),
        ({"filenames": ["secret.pdf"]}, None, []),
        ({"collectionIds": [vault["id"]]}, None, []),
        (None, [vault["id"]], []),
        # A's ids next to B's own, or a filename both use: only B's document.
        ({"documentIds": [*a_ids, shared_b["id"]]}, None, [shared_b["id"]]),
        ({"filenames": ["shared.pdf", "secret.pdf"]}, None, [shared_b["id"]]),
    ]
    searches = [Search(query, mode, 50, f, c) for mode in MODES for f, c, _ in cases]
    results = await search_many(gql, bob, searches)
    for s, hits, (_, _, expected) in zip(searches, results, cases * len(MODES), strict=True):
        assert [hit["document"]["id"] for hit in hits] == expected, (s, hits)

    # Alice, with the same filter, finds her own.
    hits = await search(gql, alice, query, "HYBRID", k=50, filter={"documentIds": a_ids})
    assert {hit["document"]["id"] for hit in hits} == set(a_ids)


async def test_a_nul_character_is_not_an_internal_error(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_ok(gql, "bread.pdf", make_pdf(["Bread needs flour, water and salt."]), token)
    fields = [f"{mode.lower()}: search(query: $q, mode: {mode}) {{ page }}" for mode in MODES]
    fields.append('named: search(query: "flour", filter: {filenames: $names}) { page }')
    body = await gql.execute(
        f"query($q: String!, $names: [String!]) {{ {' '.join(fields)} }}",
        {"q": "flour\x00water", "names": ["bread.pdf", "bread\x00.pdf"]},
        token=token,
    )
    codes = {error["extensions"]["code"] for error in body.get("errors") or []}
    assert codes <= {"BAD_USER_INPUT"}, body["errors"]


async def test_keyword_ranks_a_question_s_rare_words_above_its_common_ones(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    # Twelve pages hold "bridge" (common here), two "zeppelin" (rare); the file is named for
    # neither word (its name starts every chunk's keyword text, CONTEXT_PREFIX). A chunk
    # matches on any of the words; BM25's inverse document frequency puts the zeppelin pages
    # first, the one with both words above the other.
    token = await sign_up(gql, inbox, "ada@example.com")
    pages = [f"The old stone bridge number {n} crosses the river at noon." for n in range(12)]
    pages += ["A zeppelin over the bridge.", "A zeppelin hangar in the hills."]
    await upload_ok(gql, "crossings.pdf", make_pdf(pages), token)
    rare, common = await search_many(
        gql,
        token,
        [Search("bridge zeppelin", "KEYWORD", k=20), Search("stone bridge river", "KEYWORD", k=20)],
    )
    check_hits(rare, "KEYWORD")
    assert [hit["page"] for hit in rare][:2] == [13, 14], "the zeppelin pages, both words first"
    assert "**bridge**" in rare[0]["snippet"] and "**zeppelin**" in rare[0]["snippet"]
    assert sorted(hit["page"] for hit in rare) == list(range(1, 15)), "any word matches"
    assert sorted(hit["page"] for hit in common[:12]) == list(range(1, 13)), "all three words"
    assert [hit["page"] for hit in common[12:]] == [13], "one of them"


async def test_keyword_words_with_quotes_and_backslashes_are_matched_literally(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_ok(gql, "odd.pdf", make_pdf(["O'Brien wrote C:\\temp\\notes and a\\b'c."]), token)
    for query, found in [
        ("O'Brien", True),
        ("C:\\temp\\notes", True),
        ("a\\b'c", True),
        ("' | & ! ( ) : *", False),
        ("\\", False),
    ]:
        (hits,) = await search_many(gql, token, [Search(query, "KEYWORD")])
        check_hits(hits, "KEYWORD")
        assert bool(hits) is found, (query, hits)
