"""The Ollama client's transport: passes the request id on and counts failures."""

from __future__ import annotations

import httpx

from rag_gql.observability.metrics import Metrics
from rag_gql.observability.requests import REQUEST_ID_HEADER, current_request_id


class ObservedTransport(httpx.AsyncBaseTransport):
    """Wraps `inner`: adds `X-Request-Id` (the request being served) to each call, and counts
    timeouts, connection failures and error statuses in `metrics.ollama_errors`.

    A stream broken after its response started is not seen here; the GraphQL error it
    becomes is counted with the operation's outcome.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request_id = current_request_id()
        if request_id is not None:
            request.headers[REQUEST_ID_HEADER] = request_id
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException:
            self._metrics.ollama_error(request.url.path, "timeout")
            raise
        except httpx.TransportError:
            self._metrics.ollama_error(request.url.path, "connection")
            raise
        if response.status_code >= 400:
            self._metrics.ollama_error(request.url.path, f"http_{response.status_code}")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
