"""OpenTelemetry tracing, optional: the switch. Off unless the `otel` extra is installed and
the standard OpenTelemetry variables ask for it; then `rag_gql.observability.otel` does the
work.

The rule (`requested_exporters`), on the process environment:

- `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`: off.
- `OTEL_TRACES_EXPORTER` set: on, with the exporters it names, comma-separated: `otlp`
  (OTLP over HTTP with protobuf) and `console` (spans printed as JSON to stdout).
- Otherwise `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set: on,
  with `otlp`.
- Nothing set: off. (The OpenTelemetry SDK's own default is to export to localhost; here
  tracing has to be asked for.)

Off, nothing of OpenTelemetry is imported and nothing is added to a request. On, everything
else is OpenTelemetry's own configuration, read by its SDK from the process environment
(not from `.env`): `OTEL_EXPORTER_OTLP_ENDPOINT` (base URL, `/v1/traces` is appended),
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME` (default `rag-gql`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`. What is
traced is listed in `rag_gql.observability.otel`.

Whoever calls `setup_tracing` owns the result: it passes it to `create_app` and calls its
`shutdown()` (which sends the spans still buffered) when the server has stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from rag_gql.observability.otel import Tracing

EXPORTERS = ("otlp", "console")
"""The values `OTEL_TRACES_EXPORTER` may list."""
OTLP_PROTOCOL = "http/protobuf"
"""The only OTLP protocol the extra ships an exporter for (the collector's port 4318)."""
INSTALL_HINT = "pip install 'rag-gql[otel]'"


class TracingSetupError(RuntimeError):
    """Tracing is asked for but cannot work: the `otel` extra is missing, or the variables
    name an exporter or protocol this server does not ship."""


def requested_exporters(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the OpenTelemetry variables in `environ` ask for, by the rule of
    this module's docstring; empty when tracing is off.

    Raises:
        TracingSetupError: an exporter other than `otlp` or `console`, or an OTLP protocol
            other than `http/protobuf` (`grpc` needs an exporter the extra does not ship).
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    listed = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if listed:
        names = tuple(dict.fromkeys(n.strip() for n in listed.split(",") if n.strip()))
        if not names or "none" in names:
            return ()
    elif _set(environ, "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        names = ("otlp",)
    else:
        return ()
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise TracingSetupError(
            f"OTEL_TRACES_EXPORTER={listed!r}: {', '.join(unknown)} is not available here; "
            f"use {' or '.join(EXPORTERS)} (or none)"
        )
    if "otlp" in names:
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or OTLP_PROTOCOL
        ).strip()
        if protocol != OTLP_PROTOCOL:
            raise TracingSetupError(
                f"OTLP protocol {protocol!r} is not available here: the otel extra ships the "
                f"OTLP/HTTP exporter; set OTEL_EXPORTER_OTLP_PROTOCOL={OTLP_PROTOCOL} and point "
                "OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
            )
    return names


def setup_tracing(
    environ: Mapping[str, str] | None = None, *, exporter: SpanExporter | None = None
) -> Tracing | None:
    """Returns the process's `Tracing` when tracing is on, else None (importing nothing).

    `environ` (default `os.environ`) decides whether it is on and which exporters to build.
    Tests pass `exporter` (an `InMemorySpanExporter`): tracing is then on whatever the
    environment says, with that exporter alone, behind the same batching processor.

    Raises:
        TracingSetupError: tracing is asked for but the `otel` extra is not installed, or the
            variables cannot work (see `requested_exporters`).
    """
    names = requested_exporters(os.environ if environ is None else environ)
    if exporter is None and not names:
        return None
    try:
        from rag_gql.observability import otel
    except ImportError as exc:
        raise TracingSetupError(
            f"OpenTelemetry tracing is asked for ({_why(names)}) but the otel extra is not "
            f"installed ({exc}): {INSTALL_HINT}, or unset the OTEL_* variables"
        ) from exc
    exporters = [exporter] if exporter is not None else [otel.make_exporter(n) for n in names]
    return otel.build_tracing(exporters)


def _set(environ: Mapping[str, str], *names: str) -> bool:
    return any(environ.get(name, "").strip() for name in names)


def _why(names: tuple[str, ...]) -> str:
    return f"span exporters: {', '.join(names)}" if names else "an exporter was given"
