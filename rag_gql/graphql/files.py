"""`GET /documents/{id}/file`: a document's original file, streamed from its stored parts.

The caller authenticates as for `/graphql` (`Authorization: Bearer`, `X-API-Key`,
`X-Workspace-Id`: `Context.require_principal`), and each request counts against the `file`
rate limit (`RATE_LIMIT_FILE_PER_*`). The response carries the detected `Content-Type`, a
`Content-Disposition` with the filename (RFC 6266; `filename*` in UTF-8, RFC 8187, when it
is not plain ASCII), a strong `ETag` (the file's SHA-256) and `Accept-Ranges: bytes`.

Ranges (RFC 9110 section 14): one byte range is answered `206` with `Content-Range`; a range
past the file's end `416` with `Content-Range: bytes */size`; several ranges, or a `Range`
that does not parse, are ignored (`200` with the whole file, which RFC 9110 section 14.2
allows). `If-Range` with the current ETag keeps the range, any other value drops it;
`If-None-Match` with the current ETag (or `*`) answers `304`.

Refusals are JSON shaped like GraphQL errors (`{"errors": [{"message", "extensions":
{"code"}}]}`): 401 without valid credentials, 404 for an id that is not a document of the
caller's workspace — another workspace's reads exactly like a random one — or one marked for
deletion, 429 past the rate limit (`Retry-After`), 503 when the database is busy.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rag_gql.errors import DomainError, NotFound, RetryLater, Unauthenticated
from rag_gql.graphql.context import Context
from rag_gql.graphql.extensions import as_graphql_error
from rag_gql.resources import Services
from rag_gql.services.documents import PAGED_MEDIA_TYPES, StoredFile
from rag_gql.services.rate_limits import Operation

log = logging.getLogger(__name__)

ROUTE = "/documents/{document_id}/file"
"""The route's path template (`services.documents.file_url` makes its URLs)."""
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_STATUS = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404, "BAD_USER_INPUT": 400}
# RFC 8187's attr-char, besides letters and digits (which `quote` always keeps).
_ATTR_CHARS = "!#$&+-.^_`|~"


async def document_file(request: Request) -> Response:
    """Serves the original file of the document `document_id` (GET and HEAD; see the module).

    Every refusal is a JSON error response; a document deleted while its file streams ends
    the response early (the client sees fewer bytes than `Content-Length`).
    """
    services: Services = request.app.state.services
    context = Context(services=services, request=request)
    try:
        principal = await context.require_principal()
        await services.quotas.hit(Operation.FILE, principal)
        try:
            document_id = uuid.UUID(request.path_params["document_id"])
        except ValueError:
            raise NotFound("Document not found") from None
        stored = await services.documents.open_file(principal, document_id)
    except DomainError as exc:
        return error_response(exc)

    headers = file_headers(stored)
    if _matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=_conditional(headers))
    size = stored.size
    start, end, status = 0, size, 200
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is not None and (if_range is None or if_range.strip() == headers["ETag"]):
        match byte_range(wanted, size):
            case None:
                pass
            case "unsatisfiable":
                refusal = {"Content-Range": f"bytes */{size}", **_conditional(headers)}
                return Response(status_code=416, headers=refusal)
            case (first, last):
                start, end, status = first, last + 1, 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD" or start == end:
        return Response(status_code=status, headers=headers)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for piece in services.documents.read_file(
                principal, stored, start=start, end=end
            ):
                yield piece
        except DomainError as exc:
            # The headers are out: all that is left is to end the response short.
            log.warning("file of document %s stopped: %s", stored.document.id, exc)
            raise

    return StreamingResponse(body(), status_code=status, headers=headers)


def error_response(error: DomainError) -> JSONResponse:
    """The JSON error for `error`: `{"errors": [{"message", "extensions"}]}` as GraphQL
    gives it, with its HTTP status (401 and `WWW-Authenticate: Bearer` for UNAUTHENTICATED,
    429 or 503 and `Retry-After` for a refusal to retry later)."""
    headers: dict[str, str] = {}
    status = _STATUS.get(error.code, 500)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="rag-gql"'
    if isinstance(error, RetryLater):
        status = 429 if error.code == "RATE_LIMITED" else 503
        headers["Retry-After"] = str(error.retry_after)
    body = {"errors": [as_graphql_error(error).formatted]}
    return JSONResponse(body, status_code=status, headers=headers)


def file_headers(stored: StoredFile) -> dict[str, str]:
    """The headers of every answer with the file: type, disposition, ETag, caching, ranges.

    A PDF is `inline` (a browser opens it, at the page `#page=N` names); every other type is
    an `attachment` under `Content-Security-Policy: sandbox`, so an uploaded HTML page never
    runs as this origin.
    """
    document = stored.document
    inline = document.media_type in PAGED_MEDIA_TYPES
    headers = {
        "Content-Type": document.media_type,
        "Content-Disposition": content_disposition(
            document.filename, "inline" if inline else "attachment"
        ),
        "ETag": f'"{document.sha256}"',
        "Accept-Ranges": "bytes",
        # Revalidated on every use (a cheap 304 with the ETag) so that a revoked credential
        # stops reading from a browser's cache; never kept by a shared cache.
        "Cache-Control": "private, no-cache",
        "Vary": "Authorization, X-API-Key, X-Workspace-Id",
        "X-Content-Type-Options": "nosniff",
    }
    if not inline:
        headers["Content-Security-Policy"] = "sandbox"
    return headers


def content_disposition(filename: str, disposition: str) -> str:
    """`disposition; filename="..."` (RFC 6266 section 4.1), with `filename*=UTF-8''...`
    (RFC 8187) besides an ASCII fallback when the name is not plain printable ASCII.

    Example:
        `content_disposition("résumé.pdf", "inline")` is
        `inline; filename="r_sum_.pdf"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf`.
    """
    name = "".join(c if c.isprintable() else "_" for c in filename) or "file"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    header = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS)}"
    return header


def byte_range(value: str, size: int) -> tuple[int, int] | str | None:
    """The one byte range `value` (a `Range` header) asks of a file of `size` bytes, as
    `(first, last)` inclusive (RFC 9110 section 14.1.2); `"unsatisfiable"` when it starts
    past the end, is an empty suffix, or has `last < first`; None when the header is to be
    ignored (another unit, several ranges, bad syntax)."""
    match = _RANGE.fullmatch(value.replace(" ", "").replace("\t", ""))
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = size - 1 if not last_text else min(int(last_text), size - 1)
    if first >= size or (last_text and int(last_text) < first):
        return "unsatisfiable"
    return first, last


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` list names `etag` (weak comparison) or is `*`."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _conditional(headers: dict[str, str]) -> dict[str, str]:
    """What a 304 or a 416 repeats of the file's headers (RFC 9110 section 15.4.5)."""
    keep = ("ETag", "Cache-Control", "Vary", "Accept-Ranges")
    return {name: headers[name] for name in keep}
