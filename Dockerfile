# syntax=docker/dockerfile:1
# rag-gql API server. Build: docker build -t rag-gql .
# Run:  docker run -p 8000:8000 -e DATABASE_URL=postgresql://... -e OLLAMA_URL=http://ollama:11434 rag-gql
# Without DATABASE_URL it starts its embedded PostgreSQL under /data (mount a volume there).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY rag_gql ./rag_gql
# Editable: `rag-gql serve` applies the migrations in /app/alembic, found beside the package.
RUN pip install -e .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data
RUN useradd --create-home --uid 10001 app && mkdir /data && chown app /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["rag-gql", "serve", "--host", "0.0.0.0", "--port", "8000"]
