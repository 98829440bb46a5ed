"""`cllm4rec serve`: a small HTTP server for a saved model on the installed code, loading only its
safetensors, YAML and JSON (checksums verified) — no MLflow loader, no code from the model folder.

POST /invocations takes and answers the JSON of MLflow's scoring server (`trainer/rest.py`):
{"dataframe_records": [...], "params": {"top_m": M}} → 200 {"predictions": [...]}. A refused request
gets 400 (413 past a limit, or a body over MAX_BODY_BYTES) with {"error_code", "message"}; an
unexpected failure gets 500 with a generic message, the traceback only in the server log. GET /ping
and /health answer 200 once the model is loaded. Requests are scored one at a time, each bounded by
the serving limits; /ping stays answered meanwhile.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from trainer.rest import RequestError, answer, echo_ids
from trainer.serving import Recommender

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 2**20  # a request body past 32 MiB is refused (413) unread
ERROR_CODES = {400: "INVALID_PARAMETER_VALUE", 413: "REQUEST_LIMIT_EXCEEDED", 500: "INTERNAL_ERROR"}


def _error(status: int, message: str) -> JSONResponse:
    """A JSON error response in MLflow's shape: {"error_code": ..., "message": ...}."""
    return JSONResponse({"error_code": ERROR_CODES[status], "message": message}, status_code=status)


async def _read_body(request: Request) -> bytes:
    """The request body, refused (RequestError 413) as soon as it passes MAX_BODY_BYTES."""
    too_large = RequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


def _predictions(recommender: Recommender, lock: threading.Lock, body: bytes) -> dict[str, Any]:
    """{"predictions": rows} for one JSON request body; RequestError if refused."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"the body is not JSON: {err}") from None
    if not isinstance(request, dict) or "dataframe_records" not in request:
        raise RequestError("the body must be a JSON object with 'dataframe_records' (and optionally 'params')")
    unknown = [key for key in request if key not in ("dataframe_records", "params")]
    if unknown:
        raise RequestError(f"unknown field(s) {echo_ids(unknown)}: "
                           "a request holds 'dataframe_records' and optionally 'params'")
    with lock:
        table = answer(recommender, request["dataframe_records"], request.get("params"))
    return {"predictions": table.to_pylist()}


def create_app(recommender: Recommender) -> FastAPI:
    """The FastAPI app answering /invocations, /ping and /health with `recommender`."""
    app = FastAPI(title="cllm4rec", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one request scores at a time; others wait, /ping does not

    @app.get("/ping")
    @app.get("/health")
    async def ping() -> Response:  # on the event loop: answered while requests are being scored
        return Response("\n", media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        try:
            body = await _read_body(request)
            return JSONResponse(await run_in_threadpool(_predictions, recommender, lock, body))
        except RequestError as err:
            return _error(err.status, str(err))
        except Exception:
            log.exception("/invocations failed")
            return _error(500, "internal error while scoring: see the server log")

    return app


def serve(model_dir: Path, host: str, port: int, serving: dict[str, Any]) -> None:
    """Load the saved model at `model_dir` (or inside a pyfunc model folder) and serve it until SIGINT/SIGTERM."""
    import uvicorn

    recommender = Recommender.load(model_dir, serving=serving)
    limits = recommender.config.serving
    log.info("serving %s on http://%s:%d/invocations (max_records %d, max_history %d, top_m %d of at most %d)",
             model_dir, host, port, limits.max_records, limits.max_history, limits.top_m, limits.max_top_m)
    uvicorn.run(create_app(recommender), host=host, port=port, log_level="info")
