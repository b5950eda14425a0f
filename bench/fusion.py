"""HYBRID's fusion settings and BM25's k1/b swept over a workspace `rag-gql eval` ingested.

Usage:
    DATA_DIR=/tmp/eval-minilm OLLAMA_URL=http://127.0.0.1:11602 EMBED_DIM=384 \\
      python bench/fusion.py tests/data/eval_questions.jsonl --workspace-name eval-latex \\
      [--rrf-k 10,30,60] [--weights 1:1,2:1,5:1] [--candidates 20,50,100] \\
      [--bm25 1.2:0.75,1.5:0.5] [--k 10] [--json out.jsonl]

Run `rag-gql eval` first, with the same DATA_DIR, Ollama and workspace name: it ingests the
corpus; this script ingests nothing. Each question is embedded once and ranked once per list
at the deepest depth swept (by vector: the app's statement; by keyword: `bm25.ranked`, once
per k1/b); each setting is then scored in-process by the app's own arithmetic over those
lists (`reciprocal_rank_fusion`, each list cut at the setting's depth, then the 2k best loaded,
`merge_adjacent`, k kept), which is what `RetrievalService.retrieve` computes, since both
rankings are exact (ties by id) and so a shallower list is a prefix of a deeper one. The row
at the settings of the environment matches `rag-gql eval`'s HYBRID row. The baseline rows are
`rag-gql eval`'s (plain BM25 over the stored chunks, and BM25 + the same vectors, RRF k 60
1:1, 50 per list). MRR@k / hit@1, as `rag-gql eval` scores them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.cli import database  # noqa: E402 - after the path set-up above
from rag_gql.config import Settings  # noqa: E402
from rag_gql.eval_command import baseline_rows, eval_principal, stored_baseline  # noqa: E402
from rag_gql.evaluation import Outcome, Question, Scores, parse_questions, score  # noqa: E402
from rag_gql.repositories import bm25, chunks, search_sql  # noqa: E402
from rag_gql.repositories.chunks import ChunkRow  # noqa: E402
from rag_gql.resources import open_services  # noqa: E402
from rag_gql.services.fusion import reciprocal_rank_fusion  # noqa: E402
from rag_gql.services.retrieval import SearchHit, merge_adjacent  # noqa: E402


@dataclass(frozen=True)
class Lists:
    """One question's rankings, as deep as the sweep needs: by vector, by keyword per k1/b."""

    question: Question
    by_vector: list[int]
    by_keyword: dict[tuple[float, float], list[int]]


def _pairs(value: str, cast: type[float] | type[int] = float) -> list[tuple[float, float]]:
    return [
        (float(cast(a)), float(cast(b)))
        for a, b in (item.split(":") for item in value.split(",") if item)
    ]


def hits_of(ids: Sequence[int], rows: dict[int, ChunkRow], k: int) -> tuple[tuple[str, int], ...]:
    """What the app returns for a fused id list: the 2k best loaded, adjacent ones merged, k
    kept; as (filename, page)."""
    top = [cid for cid in ids[: k * 2] if cid in rows]
    hits = merge_adjacent(
        [
            SearchHit(
                chunk_id=cid,
                score=0.0,
                text=rows[cid].text,
                snippet="",
                page=rows[cid].page,
                char_start=rows[cid].char_start,
                char_end=rows[cid].char_end,
                document=rows[cid].document,
                ordinal=rows[cid].ordinal,
            )
            for cid in top
        ]
    )[:k]
    return tuple((hit.document.filename, hit.page) for hit in hits)


async def collect(
    settings: Settings,
    questions: Sequence[Question],
    *,
    workspace_name: str,
    depth: int,
    bm25_params: Sequence[tuple[float, float]],
    k: int,
) -> tuple[list[Lists], dict[int, ChunkRow], list[Scores]]:
    """Every question's lists, every chunk of the workspace, and the baseline rows."""
    settings = settings.model_copy(update={"query_embedding_cache_size": 0})
    exact = search_sql.ExactScan(
        settings.exact_search_max_rows,
        settings.exact_search_max_share,
        settings.exact_search_share_max_rows,
    )
    async with open_services(settings) as services:
        principal = await eval_principal(services.db, workspace_name)
        ws = principal.workspace_id
        found: list[Lists] = []
        for question in questions:
            (vector,) = await services.ollama.embed([question.text])
            async with services.db.driver_transaction(ws) as conn:
                statements = search_sql.vector_statements(
                    workspace_id=ws,
                    embedding=vector,
                    limit=depth,
                    ef_search=settings.hnsw_ef_search,
                    exact=exact,
                )
                by_vector = [cid for cid, _ in (await chunks.vector_ranked(conn, statements)).rows]
                by_keyword = {}
                for k1, b in bm25_params:
                    ranked = await bm25.ranked(
                        conn, workspace_id=ws, query=question.text, limit=depth, k1=k1, b=b
                    )
                    by_keyword[(k1, b)] = [cid for cid, _ in ranked]
            found.append(Lists(question, by_vector, by_keyword))
        async with services.db.driver_transaction(ws) as conn:
            ids = [int(r[0]) for r in await conn.fetch("SELECT id FROM chunk_fts")]
            rows = await chunks.load(conn, workspace_id=ws, ids=ids, query="", highlight=[])
        index = await stored_baseline(services.db, principal)
        baseline = await baseline_rows(index, services.ollama.embed, questions, k=k, depth=50)
    return found, rows, baseline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("questions", type=Path)
    parser.add_argument("--workspace-name", required=True)
    parser.add_argument("--rrf-k", default="10,20,30,60")
    parser.add_argument("--weights", default="1:1,1.5:1,2:1,3:1,5:1,1:1.5,1:2")
    parser.add_argument("--candidates", default="20,30,50,100")
    parser.add_argument("--bm25", default="1.2:0.75", help="k1:b pairs")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write one JSON object per row here")
    args = parser.parse_args(argv)
    questions = parse_questions(args.questions.read_text(encoding="utf-8").splitlines())
    rrf_ks = [float(x) for x in args.rrf_k.split(",")]
    weights = _pairs(args.weights)
    candidates = [int(x) for x in args.candidates.split(",")]
    bm25_params = _pairs(args.bm25)
    k = args.k
    depth = max(max(candidates), k * 2)
    settings = Settings()
    with database(settings) as url:
        lists, rows, baseline = asyncio.run(
            collect(
                settings.model_copy(update={"database_url": url}),
                questions,
                workspace_name=args.workspace_name,
                depth=depth,
                bm25_params=bm25_params,
                k=k,
            )
        )
    out: list[dict[str, object]] = []

    def row(name: str, scores: Scores, **fields: object) -> None:
        out.append(
            {"row": name, **fields, "mrr": round(scores.mrr, 4), "hit1": round(scores.hit_at_1, 4)}
        )

    row(
        "VECTOR",
        score(
            "VECTOR", [Outcome(q.question, hits_of(q.by_vector, rows, k), 0) for q in lists], k=k
        ),
    )
    for k1, b in bm25_params:
        outcomes = [Outcome(q.question, hits_of(q.by_keyword[(k1, b)], rows, k), 0) for q in lists]
        row("KEYWORD", score("KEYWORD", outcomes, k=k), k1=k1, b=b)
    for scores in baseline:
        row(scores.mode, scores)
    for k1, b in bm25_params:
        for rrf_k in rrf_ks:
            for wv, wk in weights:
                for cands in candidates:
                    d = max(k * 2, cands)
                    outcomes = []
                    for q in lists:
                        fused = reciprocal_rank_fusion(
                            [q.by_vector[:d], q.by_keyword[(k1, b)][:d]], weights=[wv, wk], k=rrf_k
                        )
                        ranking = hits_of([cid for cid, _ in fused], rows, k)
                        outcomes.append(Outcome(q.question, ranking, 0))
                    row(
                        "HYBRID",
                        score("HYBRID", outcomes, k=k),
                        k1=k1,
                        b=b,
                        rrf_k=rrf_k,
                        weights=f"{wv:g}:{wk:g}",
                        candidates=cands,
                    )
    for entry in out:
        print(json.dumps(entry))
    if args.json:
        args.json.write_text("".join(json.dumps(entry) + "\n" for entry in out), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
