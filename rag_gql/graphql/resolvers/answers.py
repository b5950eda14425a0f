"""Answers followed by id: `answerStream`, the replay and the rest of an answer, from any
replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated

import strawberry

from rag_gql.errors import DomainError
from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import parse_id


@strawberry.type
class AnswerStreamSubscription:
    @strawberry.subscription(
        description="One of the caller's answers by id (`AnswerSources.messageId`): its events "
        "after `afterSeq`, replayed from storage, then live until its AnswerDone or "
        "AnswerError — on any replica, while the answer runs or after it ended (a finished "
        "answer replays whole; nothing when `afterSeq` is at or past its end). To resume after "
        "a dropped connection, pass the last `seq` received. Another caller's answer is "
        "NOT_FOUND, as an unknown id. A credential that expires or is revoked while it streams "
        "(checked every SUBSCRIPTION_REAUTH_SECONDS) ends this stream (not the answer) with an "
        "AnswerError (UNAUTHENTICATED, FORBIDDEN)."
    )
    async def answer_stream(
        self,
        info: Info,
        message_id: Annotated[
            strawberry.ID,
            strawberry.argument(description="The answer's id: `AnswerSources.messageId`."),
        ],
        after_seq: Annotated[
            int,
            strawberry.argument(
                description="Send the events after this one (0: from the first); 0 or more."
            ),
        ] = 0,
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        services = info.context.services
        events = services.generation.runs.stream(
            principal, parse_id(message_id, "Answer"), after_seq
        )
        every = services.settings.subscription_reauth_seconds
        loop = asyncio.get_running_loop()
        recheck_at = loop.time() + every
        last = after_seq
        with services.metrics.live_subscription("answerStream"):
            async with aclosing(events):
                async for item in events:
                    if loop.time() >= recheck_at:
                        try:
                            await info.context.reauthorize(principal)
                        except DomainError as exc:
                            yield types.AnswerError(seq=last, code=exc.code, message=str(exc))
                            return
                        recheck_at = loop.time() + every
                    last = item.seq
                    yield types.answer_event(item)
