"""The circuit breaker and retry rule the HTTP providers share (Ollama, the reranker).

`Breaker.guarded()` runs a call through one `purgatory` circuit: after `threshold` calls in a
row that raised `UpstreamUnavailable` (the upstream could not be reached, timed out, dropped
the connection), calls fail at once with `CircuitOpen` for `reset` seconds; then calls are let
through again, and the first to fail opens the circuit anew, the first to succeed closes it.
Any other outcome (the upstream's own HTTP errors, a client that left: `GeneratorExit`,
`CancelledError`) ends the call as a success: the upstream answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from rag_gql.errors import UpstreamUnavailable


class CircuitOpen(UpstreamUnavailable):
    """An upstream failed too often in a row: calls fail at once until the circuit resets."""


class Breaker:
    """One named circuit (see the module's docstring).

    Args:
        name: the circuit's name, for purgatory.
        threshold: failures in a row that open the circuit.
        reset: seconds the circuit stays open.
        refusal: the message of the `CircuitOpen` raised while it is open.
    """

    def __init__(self, name: str, *, threshold: int, reset: float, refusal: str) -> None:
        self._name = name
        self._refusal = refusal
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold,
            default_ttl=reset,
            exclude=[(BaseException, lambda exc: not isinstance(exc, UpstreamUnavailable))],
        )

    @asynccontextmanager
    async def guarded(self) -> AsyncIterator[None]:
        """Runs the block through the circuit.

        Raises:
            CircuitOpen: the circuit is open; the block does not run.
        """
        breaker = await self._factory.get_breaker(self._name)
        try:
            async with breaker:
                yield
        except OpenedState as exc:
            # purgatory raises the same exception object each time: drop its traceback, or
            # every refused call would add its frames to it.
            exc.with_traceback(None)
            raise CircuitOpen(self._refusal) from None


def retryable(exc: Exception) -> bool:
    """Retry what did not reach the upstream, unless the circuit is open (retrying cannot
    help)."""
    return isinstance(exc, UpstreamUnavailable) and not isinstance(exc, CircuitOpen)
