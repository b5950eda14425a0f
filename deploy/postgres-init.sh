#!/bin/sh
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d), as
# the superuser: creates `rag`, the user rag-gql connects as. `rag` is not a superuser; it owns
# the database (the migrations create the tables it owns) and has CREATEROLE to create
# `rag_gql_app`, the role the application's connections SET ROLE to (docs/operations.md: "Your own PostgreSQL").
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$RAG_DB_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE rag LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD :'password';
ALTER DATABASE :"db" OWNER TO rag;
ALTER SCHEMA public OWNER TO rag;
CREATE EXTENSION IF NOT EXISTS vector;
SQL
