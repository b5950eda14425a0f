"""`rag-gql eval`: ingest a labelled corpus, search every question in every mode, print the table.

Besides rag-gql's modes, each run scores two baseline rows over the very chunks and vectors
rag-gql stored for the corpus (read back from the database): plain Okapi BM25 and BM25 fused
with the same dense vectors (`rag_gql.evaluation.Baseline`), so a table shows how far rag-gql
stands above or below the textbook hybrid. The metrics themselves are in `rag_gql.evaluation`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rag_gql.config import Settings
from rag_gql.db import Database, migrate
from rag_gql.evaluation import (
    BASELINE_BM25,
    BASELINE_FUSED,
    AnswerScores,
    Baseline,
    JudgedAnswer,
    Outcome,
    Question,
    Scores,
    cited_sources,
    cosine,
    format_answer_table,
    format_kind_table,
    format_table,
    judge_prompt,
    parse_questions,
    parse_verdict,
    score,
    score_answers,
)
from rag_gql.services.access import Principal
from rag_gql.services.retrieval import SearchMode, SearchRequest

if TYPE_CHECKING:
    from rag_gql.resources import Services

log = logging.getLogger("rag_gql")


def evaluate_retrieval(
    settings: Settings,
    *,
    database: Callable[[Settings], AbstractContextManager[str]],
    questions_path: Path,
    corpus: Path,
    modes: Sequence[SearchMode],
    k: int,
    workspace_name: str,
    baseline: bool = True,
    answers: bool = False,
) -> int:
    """Runs `rag-gql eval`; prints the tables to stdout and returns the exit status.

    With `answers`, a last table scores the answers (`run_answer_eval`) after RAGAS.

    `database(settings)` yields the database URL (the embedded server when DATABASE_URL is
    unset); the migrations are applied first. Exit status 2: the questions cannot be read;
    1: ingestion or search failed (logged); 0 otherwise.
    """
    try:
        questions = parse_questions(questions_path.read_text(encoding="utf-8").splitlines())
    except (OSError, ValueError) as exc:
        log.error("cannot read the questions in %s: %s", questions_path, exc)
        return 2
    if not questions:
        log.error("%s holds no questions", questions_path)
        return 2
    from rag_gql.errors import DomainError
    from rag_gql.resources import StartupError

    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
        try:
            rows = asyncio.run(
                run_eval(
                    settings.model_copy(update={"database_url": url}),
                    questions,
                    corpus=corpus,
                    modes=modes,
                    k=k,
                    workspace_name=workspace_name,
                    baseline=baseline,
                )
            )
            judged = (
                asyncio.run(
                    run_answer_eval(
                        settings.model_copy(update={"database_url": url}),
                        questions,
                        corpus=corpus,
                        k=k,
                        workspace_name=workspace_name,
                    )
                )
                if answers
                else None
            )
        except (OSError, DomainError, StartupError, ImportError) as exc:
            log.error("eval failed: %s", exc)
            return 1
    sys.stdout.write(header(settings, len(questions), modes, k, baseline) + "\n\n")
    sys.stdout.write(format_table(rows, k=k))
    kinds = format_kind_table(rows)
    if kinds:
        sys.stdout.write("\n" + kinds)
    if judged is not None:
        sys.stdout.write(
            f"\nanswers (HYBRID, k={k}; judge: {settings.ollama_chat_model}, after RAGAS)\n"
        )
        sys.stdout.write(format_answer_table(judged))
    return 0


def header(
    settings: Settings, questions: int, modes: Sequence[SearchMode], k: int, baseline: bool
) -> str:
    """The line above the table: the set's size, k, and how HYBRID and the baseline fuse."""
    text = f"{questions} questions, k={k}"
    if SearchMode.HYBRID in modes:
        s = settings
        text += (
            f"; HYBRID: RRF_K={s.rrf_k:g}, vector:keyword weights "
            f"{s.hybrid_vector_weight:g}:{s.hybrid_keyword_weight:g}, "
            f"{s.hybrid_candidates} candidates per list"
        )
    if baseline:
        text += (
            f"; baseline: bm25s Okapi BM25 (k1 1.2, b 0.75) over rag-gql's chunks, "
            f"+RRF k 60 1:1 with the same vectors, {settings.hybrid_candidates} per list"
        )
    return text


async def run_eval(
    settings: Settings,
    questions: Sequence[Question],
    *,
    corpus: Path,
    modes: Sequence[SearchMode],
    k: int,
    workspace_name: str,
    baseline: bool = False,
) -> list[Scores]:
    """Ingests the questions' documents from `corpus`, searches every question in every mode.

    Documents go into the eval workspace (see `eval_principal`); ones already there (same
    SHA-256) are not embedded again. Each search is timed, Ollama's query embedding included.
    With `baseline`, two more rows follow the modes', `BASELINE_BM25` and `BASELINE_FUSED`,
    ranked by `Baseline` over every chunk of the eval workspace as stored (text, page and
    embedding), the question embedded by the same Ollama model; their latency is the query
    embedding plus the in-process ranking.

    Returns:
        One `Scores` per mode, in the order of `modes`, then the baseline rows.

    Raises:
        FileNotFoundError: a question's document is not in `corpus`.
        InvalidInput: `k` is outside 1..SEARCH_MAX_K, or a document could not be ingested.
        DomainError: ingestion or search failed (e.g. Ollama unreachable).
        StartupError: EMBED_DIM disagrees with the database or the model.
        ImportError: `baseline` without `bm25s` installed (the `eval` extra).
    """
    if baseline:
        import bm25s  # noqa: F401 - fail before ingesting, not after

    async with ingested(settings, questions, corpus=corpus, k=k, workspace_name=workspace_name) as (
        services,
        principal,
    ):
        rows: list[Scores] = []
        for mode in modes:
            # One unmeasured search first: it opens the connections and warms the caches.
            await services.retrieval.search(principal, SearchRequest(questions[0].text, k, mode))
            outcomes: list[Outcome] = []
            for question in questions:
                started = time.perf_counter()
                hits = await services.retrieval.search(
                    principal, SearchRequest(question.text, k, mode)
                )
                elapsed_ms = (time.perf_counter() - started) * 1000
                ranking = tuple((hit.document.filename, hit.page) for hit in hits)
                outcomes.append(Outcome(question, ranking, elapsed_ms))
            rows.append(score(mode.value, outcomes, k=k))
        if baseline:
            index = await stored_baseline(services.db, principal)
            embed = services.ollama.embed
            rows.extend(
                await baseline_rows(index, embed, questions, k=k, depth=settings.hybrid_candidates)
            )
    return rows


@asynccontextmanager
async def ingested(
    settings: Settings,
    questions: Sequence[Question],
    *,
    corpus: Path,
    k: int,
    workspace_name: str,
) -> AsyncIterator[tuple[Services, Principal]]:
    """Opens the services (query-embedding cache off) and ingests the questions' documents
    from `corpus` into the eval workspace; yields the services and its OWNER principal.

    Raises: as `run_eval` does (FileNotFoundError, InvalidInput, DomainError, StartupError).
    """
    from rag_gql.errors import InvalidInput
    from rag_gql.ingestion import bulk
    from rag_gql.ingestion.worker import ingestion_worker
    from rag_gql.resources import open_services

    if not 1 <= k <= settings.search_max_k:  # before ingesting, not after
        raise InvalidInput(f"k must be between 1 and {settings.search_max_k} (SEARCH_MAX_K)")
    paths = [corpus / name for name in dict.fromkeys(q.document for q in questions)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"not in {corpus}: {', '.join(missing)}")
    # Every search embeds its question, as a new question does: with the cache, modes after
    # the first would reuse the vectors and their latencies would not compare.
    settings = settings.model_copy(update={"query_embedding_cache_size": 0})
    async with open_services(settings) as services:
        principal = await eval_principal(services.db, workspace_name)
        async with ingestion_worker(services):
            started = time.perf_counter()
            outcomes_in = await bulk.submit_all(services, principal, paths, None)
            await bulk.wait_for(services.db, principal.workspace_id, outcomes_in)
        for outcome in outcomes_in:
            if outcome.status in ("FAILED", "REJECTED"):
                raise InvalidInput(f"{outcome.path.name} could not be ingested: {outcome.reason}")
        log.info(
            "%d documents ready (%d already there) in %.1f s",
            len(outcomes_in),
            sum(o.status == "DUPLICATE" for o in outcomes_in),
            time.perf_counter() - started,
        )
        yield services, principal


async def run_answer_eval(
    settings: Settings,
    questions: Sequence[Question],
    *,
    corpus: Path,
    k: int,
    workspace_name: str,
) -> AnswerScores:
    """`rag-gql eval --answers`: ingests as `run_eval` does, then `judge_answers`.

    Raises: as `run_eval` and `judge_answers` do.
    """
    async with ingested(settings, questions, corpus=corpus, k=k, workspace_name=workspace_name) as (
        services,
        principal,
    ):
        return await judge_answers(services, principal, questions, k=k)


async def stored_baseline(db: Database, principal: Principal) -> Baseline:
    """A `Baseline` over every chunk of the principal's workspace: its document's filename,
    its page, its stored `text` and embedding, in chunk id order.

    Raises:
        ValueError: the workspace has no chunks.
    """
    from rag_gql.repositories import chunks

    async with db.transaction(principal.workspace_id) as session:
        rows = await chunks.workspace_chunks(session, principal.workspace_id)
    return Baseline(
        [(row.filename, row.page) for row in rows],
        [row.text for row in rows],
        [list(row.embedding) for row in rows],
    )


async def baseline_rows(
    index: Baseline,
    embed: Callable[[list[str]], Awaitable[list[list[float]]]],
    questions: Sequence[Question],
    *,
    k: int,
    depth: int,
) -> list[Scores]:
    """Scores `BASELINE_BM25` and `BASELINE_FUSED` for `questions`; `embed` is
    `OllamaClient.embed` (texts in, one vector each out). Each list is `max(k, depth)` deep."""
    depth = max(k, depth)
    plain: list[Outcome] = []
    fused: list[Outcome] = []
    for question in questions:
        started = time.perf_counter()
        ranking = index.ranking(index.bm25(question.text, depth), k)
        plain.append(Outcome(question, ranking, (time.perf_counter() - started) * 1000))
        started = time.perf_counter()
        (vector,) = await embed([question.text])
        ranking = index.ranking(index.fused(question.text, vector, depth), k)
        fused.append(Outcome(question, ranking, (time.perf_counter() - started) * 1000))
    return [score(BASELINE_BM25, plain, k=k), score(BASELINE_FUSED, fused, k=k)]


async def eval_principal(db: Database, workspace_name: str) -> Principal:
    """The OWNER of the eval user's personal workspace; creates the user and workspace if new.

    The user is `<slug of workspace_name>@eval.invalid`: the API refuses the reserved
    `.invalid` domain (RFC 2606), and the password hash is unusable, so nobody can register,
    log in or reset a password as this user.
    """
    from datetime import UTC, datetime

    from rag_gql.db.models import Role
    from rag_gql.db.session import scope
    from rag_gql.repositories import users, workspaces

    slug = re.sub(r"[^a-z0-9]+", "-", workspace_name.lower()).strip("-")[:64] or "eval"
    email = f"{slug}@eval.invalid"
    async with db.transaction() as session:
        user = await users.get_by_email(session, email)
        if user is None:
            user = await users.add(session, email=email, password_hash="!")  # noqa: S106 - no hash
            user.verified_at = datetime.now(UTC)
        await scope(session, user_id=user.id)
        workspace_id = await workspaces.personal_workspace_id(session, user.id)
        if workspace_id is None:
            workspace = await workspaces.create_personal_workspace(session, user)
            workspace.name = workspace_name[:200]
            workspace_id = workspace.id
    return Principal(workspace_id=workspace_id, role=Role.OWNER, user_id=user.id, email=email)


async def judge_answers(
    services: Services, principal: Principal, questions: Sequence[Question], *, k: int
) -> AnswerScores:
    """Answers every question as `ask` does (HYBRID, `k` sources), then has the chat model
    judge each answer against its sources (`rag_gql.evaluation.JUDGE_PROMPT`, one call per
    answer, temperature 0) and scores them (`score_answers`). Answer relevance embeds the
    judge's questions and the asked one with the embedding model.

    An answer that fails (a `Failed` event) or a verdict that does not parse counts as
    unjudged. Raises what `GenerationService.ask` raises before its first event, and
    `DomainError` when a judge call fails.
    """
    from rag_gql.providers.ollama import ChatMessage

    judged: list[JudgedAnswer] = []
    for question in questions:
        result = await services.generation.ask(
            principal, SearchRequest(question.text, k, SearchMode.HYBRID)
        )
        if result.failed is not None or result.sources is None:
            judged.append(JudgedAnswer(None, frozenset(), ()))
            continue
        texts = [hit.text for hit in result.sources.hits]
        prompt = judge_prompt(result.text, texts)
        reply = await services.ollama.chat(
            [ChatMessage("user", prompt)], options={"temperature": 0}
        )
        verdict = parse_verdict(reply.text, len(texts))
        similarities: tuple[float, ...] = ()
        if verdict is not None and verdict.questions:
            asked, *generated = await services.ollama.embed([question.text, *verdict.questions])
            similarities = tuple(cosine(asked, other) for other in generated)
        judged.append(JudgedAnswer(verdict, cited_sources(result.text, len(texts)), similarities))
    return score_answers(judged)
