"""The HTTP server of ``reccomp serve``: FastAPI on uvicorn, with request micro-batching.

Endpoints:

- ``POST /predict`` ``{"rows": [{"<field>": value, ...}, ...]}`` -> ``{"predictions": [...]}``
  in row order. A field left out takes the missing row, an unseen value the
  out-of-vocabulary row (as in training).
- ``POST /recommend`` (retrieval models) ``{"user": value, "k": 20, "exclude": [...]}`` ->
  ``{"items": [{"item": value, "score": s}, ...]}``, best first.
- ``GET /health``, ``GET /metadata`` (the artifact's manifest).

Bad requests (malformed JSON, an unknown field, a wrong type, more rows than ``max_rows``, a
body over ``max_body_bytes``) get a 4xx whose ``detail`` names the problem; the server goes on.
Each request is validated and encoded on its own, then concurrent requests are run as one
program call: the batcher takes every request already waiting, up to ``max_batch`` rows, and
under load (its last call held several requests) and while the batch is small, waits up to
``max_wait_ms`` for more. The server
keeps no state between requests, so it scales out as processes (``--workers N``) or replicas
behind any load balancer.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from reccomp.serving.encode import RequestError
from reccomp.serving.predictor import Encoded, Predictor


class MicroBatcher:
    """Runs the encodings of concurrent requests as one program call."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_ms: float) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[tuple[Encoded, asyncio.Future[np.ndarray]]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0
        self.busy = False

    async def predict(self, enc: Encoded) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # first request, or a new event loop (test clients)
            self.loop, self.queue = loop, asyncio.Queue()
            self.task = loop.create_task(self._loop())
        assert self.queue is not None
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        await self.queue.put((enc, fut))
        return await fut

    async def _loop(self) -> None:
        assert self.queue is not None
        while True:
            first = await self.queue.get()
            batch, rows = [first], len(first[0])
            # take what is already waiting; wait for more only under load (the last call
            # batched several requests) and for small batches, whose fixed cost per call
            # dominates: a lone request, or a large one, is not held back
            small = rows < max(self.max_batch // 16, 1)
            wait = self.max_wait if self.busy and small else 0.0
            deadline = time.perf_counter() + wait
            while rows < self.max_batch:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                else:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                batch.append(item)
                rows += len(item[0])
            self.busy = len(batch) > 1
            encs = [e for e, _ in batch]
            try:
                # on the event loop's thread, not a worker thread: torch calls from several
                # threads give each its own OpenMP team, whose spinning costs more than the
                # program (1,024 rows: 0.3 ms inline, 2-3 ms through asyncio.to_thread)
                preds = self.predictor.run(Encoded.concat(encs))
            except Exception as e:  # a failed call fails its requests, not the server
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.calls += 1
            start = 0
            for enc, fut in batch:
                if not fut.done():
                    fut.set_result(preds[start : start + len(enc)])
                start += len(enc)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(
    directory: str,
    max_rows: int = 10_000,
    max_body_bytes: int = 8 << 20,
    max_batch: int = 4096,
    max_wait_ms: float = 2.0,
    backend: str = "auto",
) -> FastAPI:
    """The ASGI app serving the artifact in ``directory``."""
    predictor = Predictor(directory, backend=backend)
    batcher = MicroBatcher(predictor, max_batch, max_wait_ms)
    app = FastAPI(title="reccomp", summary=f"exported model {directory}")
    app.state.predictor, app.state.batcher = predictor, batcher

    async def body_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise _Reject(413, f"body of {length} bytes is over the limit of {max_body_bytes}")
        if length is not None and length.isdigit():
            body = await request.body()  # its size is known and under the limit
        else:  # chunked: count as it comes
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    raise _Reject(413, f"body over the limit of {max_body_bytes} bytes")
        try:
            return orjson.loads(body)  # 3x json's speed on a 1,024-row body
        except orjson.JSONDecodeError as e:
            raise _Reject(400, f"malformed JSON: {e}") from None

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(_Reject)
    async def _rejected(request: Request, exc: _Reject) -> JSONResponse:
        return _error(exc.status, exc.detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        payload = await body_json(request)  # a bad body raises _Reject: its 4xx
        if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
            return _error(422, 'expected {"rows": [{"<field>": value, ...}, ...]}')
        rows = payload["rows"]
        if len(rows) > max_rows:
            return _error(413, f"{len(rows)} rows is over the limit of {max_rows} a request")
        try:
            enc = predictor.encode(rows)  # numpy: about 1 ms for 1,024 rows
        except RequestError as e:
            return _error(422, str(e))
        preds = await batcher.predict(enc) if rows else np.zeros(0, np.float32)
        # serialized here, numpy in one call: FastAPI's encoder walks every float of a dict
        body = orjson.dumps({"predictions": preds}, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, media_type="application/json")

    @app.post("/recommend")
    async def recommend(request: Request) -> Any:
        payload = await body_json(request)
        if not isinstance(payload, dict) or "user" not in payload:
            return _error(422, 'expected {"user": value, "k": 20, "exclude": [...]}')
        k, exclude = payload.get("k", 20), payload.get("exclude", [])
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_rows:
            return _error(422, f"k must be an integer from 1 to {max_rows}, got {k!r}")
        if not isinstance(exclude, list):
            return _error(422, f"exclude must be a list of items, got {exclude!r}")
        unknown = set(payload) - {"user", "k", "exclude"}
        if unknown:
            return _error(422, f"unknown key(s) {sorted(unknown)}; expected user, k, exclude")
        try:
            top = predictor.recommend(payload["user"], k, exclude)  # torch on one thread
        except RequestError as e:
            return _error(422, str(e))
        return {"items": [{"item": it, "score": s} for it, s in top]}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "task": predictor.task, "program_calls": batcher.calls}

    @app.get("/metadata")
    async def metadata() -> Any:
        return predictor.manifest

    return app


class _Reject(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def app_from_env() -> FastAPI:
    """The app of ``$RECCOMP_SERVE_DIR`` and its options (``reccomp serve --workers N``
    starts each worker process through this factory)."""
    opts = json.loads(os.environ.get("RECCOMP_SERVE_OPTIONS", "{}"))
    return create_app(os.environ["RECCOMP_SERVE_DIR"], **opts)
