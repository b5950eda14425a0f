"""The ingestion room: an upload from its submission to READY chunks.

`submit` (API side: store and queue an upload, reindex), `pipeline` (worker side: parse,
chunk, embed, write), `queue` (procrastinate: jobs, fair priorities, stalled jobs), `worker`
(a worker process over a pipeline), `bulk` (`rag-gql ingest`), `recovery` (documents left
without an outcome).
"""
