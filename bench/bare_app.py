"""The ceiling for the read benchmark: a bare FastAPI app that serves fixed bytes.

``bench/run.py`` fetches a stored CarePlan from the real server, writes its bytes to a file and
starts this app with ``BENCH_BARE_BODY=<file>``; ``GET /fhir/CarePlan/{id}`` then answers those
bytes for every id, as ``application/fhir+json``, with no database, no dependencies and no
threadpool (an ``async`` endpoint). Serve with::

    BENCH_BARE_BODY=body.json .venv/bin/uvicorn --app-dir bench --factory bare_app:create_app \
        --loop uvloop --http httptools --workers 1 --no-access-log
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

MEDIA_TYPE = "application/fhir+json;charset=utf-8"


def create_app() -> FastAPI:
    body = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/fhir/CarePlan/{resource_id}")
    async def read(resource_id: str) -> Response:
        return Response(body, media_type=MEDIA_TYPE)

    @app.get("/fhir/metadata")
    async def metadata() -> Response:
        return Response(b'{"resourceType":"CapabilityStatement"}', media_type=MEDIA_TYPE)

    return app
