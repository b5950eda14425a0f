"""Settings that take the rate limits and the per-user caps out of the way, for tools that
send more than a person would (bench/fuzz.py, bench/load.py): they measure the server, not
its limits, and say so in their output."""

from __future__ import annotations

from rag_gql.config import Settings

HIGH_RATE = "1000000/minute"
HIGH_COUNT = 1_000_000
CAPS = (
    "max_answer_streams_per_user",
    "ws_max_operations_per_connection",
    "ws_max_operations_per_user",
    "max_websockets_per_user",
    "max_websockets_per_ip",
)


def raised_limits() -> dict[str, str | int]:
    """`Settings` updates: every `RATE_LIMIT_*` rate at 1,000,000/minute, and the caps on
    live answers, subscriptions and sockets (per user, per socket, per IP) at 1,000,000 (those
    of them that this version of `Settings` has)."""
    updates: dict[str, str | int] = {
        name: HIGH_RATE
        for name in Settings.model_fields
        if name.startswith("rate_limit_") and name != "rate_limit_storage_uri"
    }
    updates.update({name: HIGH_COUNT for name in CAPS if name in Settings.model_fields})
    return updates


def as_environment(updates: dict[str, str | int]) -> dict[str, str]:
    """The same updates as environment variables (`RATE_LIMIT_SEARCH_PER_USER=...`)."""
    return {name.upper(): str(value) for name, value in updates.items()}
