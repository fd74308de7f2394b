"""Serving figures of an exported model: in-process, over HTTP, a soak, serving bytes.

    python benchmarks/serving.py --ckpt runs/ml-100k-mf/version_0/checkpoints/best-3.ckpt
        [--parts inprocess,http,soak,bytes] [--seconds 3] [--soak-requests 20000]

- ``inprocess``: rows/s of the eager serving model, the exported ``model.pt2`` (torch's graph
  interpreter) and its AOTInductor package on the same tensors at batch 1 and 1024, for fp32,
  int8 and int4, and of ``Predictor.predict`` from raw rows (rotating rounds; best).
- ``http``: ``reccomp serve`` in a subprocess, loaded by wrk (one client thread; an asyncio +
  aiohttp client where wrk is not installed: ``apt install wrk``): requests/s and
  p50 / p99 latency at concurrency 1, 8 and 64 for 1-row and 100-row requests, and rows/s
  for 1,024-row requests. Every loop is bounded in requests and seconds.
- ``soak``: 20,000 requests mixing good and bad ones (malformed JSON, unknown fields, wrong
  types, huge bodies, unseen values): 5xx count, bad requests answered 4xx, good answers
  unchanged, server memory (RSS) at start and end.
- ``bytes``: for every registered method, serving bytes fp32 / int8 / int4 against
  ``memory_bytes()`` of the training collection (the run's schema, its budget).

Client and server share the machine's cores: on 2 vCPUs the HTTP figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reccomp.console import quiet


def _rows_of(model: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` raw rows drawn from the vocabularies (what clients send)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row: dict[str, Any] = {}
        for f in model.fields:
            v = f.vocab[rng.randrange(len(f.vocab))].item() if len(f.vocab) else None
            if f.kind == "hex":
                v = f"{int(v):08x}"
            elif f.kind == "names":
                names = list(f.names)
                v = [names[int(v)]] if names else []
            row[f.name] = v
        for d in model.dense_names:
            row[d] = rng.randint(0, 50)
        out.append(row)
    return out


def _best_rate(fn: Any, rows: int, seconds: float, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / rounds and n < 100_000:
            fn()
            n += 1
        best = max(best, n * rows / (time.perf_counter() - t0))
    return best


def inprocess(ckpt: str, exports: dict[str, Path], seconds: float) -> tuple[list[str], float]:
    """Eager program (the same serving copy, quantized alike) against the exported one on the
    same tensors, and the predictor end to end (raw dicts in); alternating rounds, best."""
    from reccomp.export.program import serving_program
    from reccomp.runs import load_run
    from reccomp.serving import load

    task, _, _ = load_run(ckpt)
    lines = ["| artifact | batch | eager rows/s | model.pt2 rows/s | AOTInductor rows/s | "
             "AOTI / eager | predict() from raw rows (AOTI), rows/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    at_1024 = 0.0
    for q, art in exports.items():
        model = load(art)  # auto: the AOTInductor package
        interpreted = load(art, backend="export")
        eager_prog, _ = serving_program(task, q)
        for b in (1, 1024):
            raw = _rows_of(model, b)
            enc = model.encode(raw)
            if b < model.min_batch:
                enc = type(enc).concat([enc] * model.min_batch)
            ex = (torch.from_numpy(enc.dense), torch.from_numpy(np.concatenate(enc.values)),
                  torch.from_numpy(np.concatenate(enc.lengths)))  # fmt: skip

            def call(fn: Any, ex: Any = ex) -> Any:
                def run() -> None:
                    with torch.no_grad():
                        fn(*ex)

                return run

            def end_to_end(raw: Any = raw, model: Any = model) -> None:
                model.predict(raw)

            rates = {"e": 0.0, "x": 0.0, "a": 0.0, "p": 0.0}
            sides = [(call(eager_prog), "e"), (call(interpreted._run), "x"),
                     (call(model._run), "a"), (end_to_end, "p")]  # fmt: skip
            for r in range(4):  # rotate which side runs first
                for fn, side in sides[r:] + sides[:r]:
                    rates[side] = max(rates[side], _best_rate(fn, b, seconds / 4, 1))
            if q == "none" and b == 1024:
                at_1024 = rates["p"]
            lines.append(f"| {q} | {b} | {rates['e']:,.0f} | {rates['x']:,.0f} | "
                         f"{rates['a']:,.0f} | {rates['a'] / rates['e']:.2f}x | {rates['p']:,.0f} |")  # fmt: skip
    return lines, at_1024


# -- HTTP --------------------------------------------------------------------------------------
def _start_server(art: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reccomp", "serve", str(art), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("reccomp serve did not start")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _load(url: str, bodies: list[bytes], concurrency: int, seconds: float,
                max_requests: int) -> dict[str, float]:  # fmt: skip
    """``concurrency`` clients posting in a loop (aiohttp), bounded in requests and time."""
    import aiohttp

    lat: list[float] = []
    done = 0
    stop = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop and done < max_requests:
                t0 = time.perf_counter()
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                lat.append(time.perf_counter() - t0)
                done += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"rps": done / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "n": done}  # fmt: skip


def _ms(text: str) -> float:
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    for u in ("us", "ms", "s"):
        if text.endswith(u):
            return float(text[: -len(u)]) * units[u]
    return float(text)


def _wrk(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """wrk (C, one client thread) posting ``body``: far less client CPU than Python."""
    import re
    import shutil

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f"wrk.body = {json.dumps(body.decode())}\n")
    cmd = [shutil.which("wrk") or "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
           "--latency", "-s", f.name, url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    os.unlink(f.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))
    return {"rps": rps, "p50": p50, "p99": p99}


def http(art: Path, port: int, seconds: float, inproc_1024: float | None) -> list[str]:
    from reccomp.serving import load

    model = load(art)
    proc = _start_server(art, port)
    url = f"http://127.0.0.1:{port}/predict"
    import shutil

    use_wrk = shutil.which("wrk") is not None
    print(f"load generator: {'wrk (1 thread)' if use_wrk else 'aiohttp (asyncio)'}")
    best_1024 = 0.0
    lines = ["| rows a request | concurrency | requests/s | rows/s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    try:
        for rows in (1, 100, 1024):
            bodies = [json.dumps({"rows": _rows_of(model, rows, seed=s)}).encode()
                      for s in range(16)]  # fmt: skip
            for conc in (1, 8, 64) if rows != 1024 else (1, 2, 8):
                r = (_wrk(url, bodies[0], conc, seconds) if use_wrk
                     else asyncio.run(_load(url, bodies, conc, seconds, 20_000)))  # fmt: skip
                if rows == 1024:
                    best_1024 = max(best_1024, r["rps"] * rows)
                lines.append(f"| {rows} | {conc} | {r['rps']:,.0f} | {r['rps'] * rows:,.0f} | "
                             f"{r['p50']:.1f} | {r['p99']:.1f} |")  # fmt: skip
        if inproc_1024:
            lines.append(
                f"\nIn-process predict() rows/s at 1,024 raw rows: {inproc_1024:,.0f}; "
                f"over HTTP at 1,024-row requests: {best_1024:,.0f} "
                f"({best_1024 / inproc_1024:.2f} of it)"
            )
    finally:
        proc.terminate()
        proc.wait(10)
    return lines


def soak(art: Path, port: int, n: int) -> list[str]:
    import httpx

    from reccomp.serving import load

    model = load(art)
    good_rows = _rows_of(model, 5, seed=1)
    want = model.predict(good_rows).tolist()
    f0 = model.field_names[0]
    bad_bodies = [
        b'{"rows": [',
        json.dumps({"rows": [{"no_such_field": 1}]}).encode(),
        json.dumps({"rows": [{f0: {"nested": 1}}]}).encode(),
        json.dumps({"rows": "not a list"}).encode(),
        b'{"rows": [' + b" " * (9 << 20) + b"]}",
        b"\xff\xfe garbage",
    ]
    unseen = json.dumps({"rows": [{f0: 10**15}, {}]}).encode()
    proc = _start_server(art, port)
    counts = {"5xx": 0, "bad_not_4xx": 0, "good_changed": 0, "good": 0, "bad": 0}
    first: list[float] | None = None
    rss0 = _rss_mb(proc.pid)
    t0 = time.perf_counter()
    try:
        with httpx.Client(timeout=30) as c:
            url = f"http://127.0.0.1:{port}/predict"
            for i in range(n):
                kind = i % 4
                if kind in (0, 1):
                    r = c.post(url, json={"rows": good_rows})
                    counts["good"] += 1
                    got = r.json()["predictions"] if r.status_code == 200 else None
                    first = first or got
                    # unchanged: the server's first answer exactly, the predictor's as float32
                    if got is None or got != first or not np.allclose(got, want, atol=1e-6):
                        counts["good_changed"] += 1
                elif kind == 2:
                    r = c.post(url, content=bad_bodies[(i // 4) % len(bad_bodies)],
                               headers={"content-type": "application/json"})  # fmt: skip
                    counts["bad"] += 1
                    if not 400 <= r.status_code < 500:
                        counts["bad_not_4xx"] += 1
                else:
                    r = c.post(url, content=unseen, headers={"content-type": "application/json"})
                    counts["good"] += 1
                    if r.status_code != 200:
                        counts["good_changed"] += 1
                if r.status_code >= 500:
                    counts["5xx"] += 1
        rss1 = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    wall = time.perf_counter() - t0
    return [
        f"{n} requests in {wall:.0f} s: {counts['good']} good, {counts['bad']} bad; "
        f"5xx: {counts['5xx']}; bad requests not answered 4xx: {counts['bad_not_4xx']}; "
        f"good answers changed: {counts['good_changed']}; server RSS {rss0:.0f} MiB at start, "
        f"{rss1:.0f} MiB at the end"
    ]


def serving_bytes(ckpt: str) -> list[str]:
    import dataclasses

    from reccomp.compress import method_names
    from reccomp.compress.data import FitData
    from reccomp.export.program import quantize_storage
    from reccomp.modules.embedding import build_embeddings
    from reccomp.runs import load_run

    task, dm, _ = load_run(ckpt)
    schema = dm.schema
    budget = task.spec.budget or 0.25
    lines = ["| method | memory_bytes() (training, fp32) | serving fp32 | int8 | int4 | int4 / fp32 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    data = FitData.from_schema(schema)
    for m in method_names():
        spec = dataclasses.replace(task.spec, method=m, budget=None if m == "full" else budget,
                                   options={})  # fmt: skip
        try:
            coll = build_embeddings(schema, spec, data=data)
        except ValueError as e:
            lines.append(f"| {m} | cannot reach {budget}: {str(e)[:60]} | | | | |")
            continue
        if coll.search_epochs:
            coll.advance_phase()
        sizes = []
        for q in ("none", "int8", "int4"):
            s = coll.to_serving()
            quantize_storage(s, q)
            sizes.append(s.memory_bytes())
        lines.append(f"| {m} | {coll.memory_bytes():,} | {sizes[0]:,} | {sizes[1]:,} | "
                     f"{sizes[2]:,} | {sizes[2] / sizes[0]:.3f} |")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--parts", default="inprocess,http,soak,bytes")
    p.add_argument("--seconds", type=float, default=3.0, help="per measured cell")
    p.add_argument("--soak-requests", type=int, default=20_000)
    p.add_argument("--port", type=int, default=8765)
    a = p.parse_args()
    quiet()
    from reccomp.export.cli import export_main
    from reccomp.runtime import tune_malloc

    tune_malloc()
    parts = a.parts.split(",")
    out = Path(tempfile.mkdtemp(prefix="reccomp-serving-"))
    exports = {}
    for q in ("none", "int8", "int4"):
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                argv = ["--ckpt", a.ckpt, "--quantize", q, "--output", str(out / q), "--aoti"]
                assert export_main(argv) == 0
            finally:
                sys.stdout = stdout
        exports[q] = out / q
    print(f"# serving benchmark of {a.ckpt} ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)\n")
    inproc_1024 = None
    if "inprocess" in parts:
        lines, inproc_1024 = inprocess(a.ckpt, exports, a.seconds)
        print("\n".join(["## In process", "", *lines, ""]))
    if "http" in parts:
        print("\n".join(["## HTTP (fp32 artifact)", "", *http(exports["none"], a.port, a.seconds,
                                                                inproc_1024), ""]))  # fmt: skip
    if "soak" in parts:
        print(
            "\n".join(
                ["## Soak (fp32 artifact)", "", *soak(exports["none"], a.port, a.soak_requests), ""]
            )
        )
    if "bytes" in parts:
        print("\n".join(["## Serving bytes", "", *serving_bytes(a.ckpt), ""]))


if __name__ == "__main__":
    main()
