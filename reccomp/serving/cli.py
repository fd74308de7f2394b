"""``reccomp serve DIR``: serve an exported model over HTTP (see :mod:`.server`).

reccomp serve runs/X/version_0/export/none [--host 127.0.0.1] [--port 8000] [--workers N]
    [--max-rows 10000] [--max-batch 4096] [--max-wait-ms 2] [--backend auto|export|aoti]
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reccomp serve", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", help="an artifact written by reccomp export")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes (one model each)")
    p.add_argument("--max-rows", type=int, default=10_000, help="rows per request at most")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request body size limit")
    p.add_argument("--max-batch", type=int, default=4096, help="rows per micro-batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="micro-batch wait")
    p.add_argument(
        "--backend", default="auto", choices=["auto", "export", "aoti"],
        help="auto: the AOTInductor package when the artifact has one (export --aoti)",
    )  # fmt: skip
    return p


def serve_main(argv: list[str]) -> int:
    import uvicorn

    from reccomp.serving import ArtifactError
    from reccomp.serving.predictor import read_manifest

    a = _parser().parse_args(argv)
    try:
        manifest = read_manifest(a.directory)  # fail here, not in every worker
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opts = {
        "max_rows": a.max_rows,
        "max_body_bytes": int(a.max_body_mb * 2**20),
        "max_batch": a.max_batch,
        "max_wait_ms": a.max_wait_ms,
        "backend": a.backend,
    }
    os.environ["RECCOMP_SERVE_DIR"] = a.directory
    os.environ["RECCOMP_SERVE_OPTIONS"] = json.dumps(opts)
    task = manifest["schema"]["task"]
    print(f"Serving {a.directory} ({task}) on http://{a.host}:{a.port} with {a.workers} worker(s)")
    verbose = os.environ.get("RECCOMP_VERBOSE") == "1"
    uvicorn.run(
        "reccomp.serving.server:app_from_env",
        factory=True,
        host=a.host,
        port=a.port,
        workers=a.workers,
        log_level="info" if verbose else "warning",
        access_log=verbose,
    )
    return 0
