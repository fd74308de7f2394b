"""Tables and the Pareto plot of a bench directory, from its result files alone."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from reccomp.bench.config import BenchConfig


def load(out: Path) -> tuple[BenchConfig, list[dict[str, Any]]]:
    cfg = BenchConfig(**json.loads((out / "bench.json").read_text()))
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    return cfg, cells


def _stats(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def in_grid(cfg: BenchConfig, cell: dict[str, Any]) -> bool:
    """Whether a result file is a cell of this config (a directory can hold cells of other
    budgets or seeds, from an earlier config or a command-line override)."""
    return (
        cell["method"] in cfg.methods
        and cell["seed"] in cfg.seeds
        and (float(cell["budget"]) in {float(b) for b in cfg.budgets} or cell["method"] == "full")
    )


def aggregate(cfg: BenchConfig, cells: list[dict[str, Any]]) -> dict[tuple[str, float], dict]:
    """(method, budget) -> mean/std of every metric over seeds, memory, timing."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for c in cells:
        if c.get("status") == "ok" and in_grid(cfg, c):
            groups.setdefault((c["method"], float(c["budget"])), []).append(c)
    agg = {}
    for key, cs in groups.items():
        m = [c["metrics"] for c in cs]
        row: dict[str, Any] = {"n": len(cs), "seeds": sorted(c["seed"] for c in cs)}
        for k in [*cfg.metrics, *cfg.show]:
            row[k] = _stats([x.get(k) for x in m])
        row["bytes"] = _stats([x["embeddings/bytes"] for x in m])[0]
        row["ratio"] = _stats([x["embeddings/ratio"] for x in m])[0]
        row["train_s"] = _stats([x.get("train/seconds") for x in m])[0]
        row["samples_per_s"] = _stats([x.get("train/samples_per_s") for x in m])[0]
        row["params"] = _stats([x.get("model/parameters") for x in m])[0]
        row["lat1"] = _stats([c["latency_ms"]["1"] for c in cs])[0]
        row["lat1024"] = _stats([c["latency_ms"]["1024"] for c in cs])[0]
        agg[key] = row
    return agg


def _fmt(mean: float, std: float, digits: int = 4, n: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    if n < 2:  # one seed: no spread to show
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _better(cfg: BenchConfig, metric: str, a: float, b: float) -> bool:
    return a < b if metric in cfg.lower_is_better else a > b


def tables(cfg: BenchConfig, cells: list[dict[str, Any]]) -> tuple[str, list[list[Any]], str]:
    """(table.md text, table.csv rows, timing.md text)."""
    agg = aggregate(cfg, cells)
    ref = {1.0} if "full" in cfg.methods else set()  # full's column
    budgets = sorted({float(b) for b in cfg.budgets} | ref, reverse=True)
    methods = [m for m in cfg.methods]
    full = agg.get(("full", 1.0))
    md = [f"# {cfg.name}\n", f"Training config `{cfg.train_config}`, seeds {cfg.seeds}.\n"]
    md += _shown_lines(cfg, cells)
    for metric in cfg.metrics:
        arrow = "lower is better" if metric in cfg.lower_is_better else "higher is better"
        md.append(f"\n## {metric} ({arrow}; mean ± std over seeds, best per budget in bold)\n")
        head = ["method", *[f"{b:g}" for b in budgets]]
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "---|" * len(head))
        best = {}
        for b in budgets:
            vals = [(agg[(m, b)][metric][0], m) for m in methods if m != "full" and (m, b) in agg]
            vals = [v for v in vals if not math.isnan(v[0])]
            if vals:
                pick = vals[0]
                for v in vals[1:]:
                    if _better(cfg, metric, v[0], pick[0]):
                        pick = v
                best[b] = pick[1]
        for m in methods:
            row = [m]
            for b in budgets:
                r = agg.get((m, b))
                if r is None:
                    row.append("")
                    continue
                s = _fmt(*r[metric], n=r["n"])
                row.append(f"**{s}**" if best.get(b) == m else s)
            md.append("| " + " | ".join(row) + " |")
        if full is not None:
            md.append(f"\n{metric} minus that of `full` ({_fmt(*full[metric], n=full['n'])}):\n")
            md.append("| " + " | ".join(head) + " |")
            md.append("|" + "---|" * len(head))
            for m in methods:
                if m == "full":
                    continue
                row = [m]
                for b in budgets:
                    r = agg.get((m, b))
                    row.append("" if r is None else f"{r[metric][0] - full[metric][0]:+.4f}")
                md.append("| " + " | ".join(row) + " |")
    md.append("\n## Achieved memory (ratio to the full collection)\n")
    head = ["method", *[f"{b:g}" for b in budgets]]
    md.append("| " + " | ".join(head) + " |")
    md.append("|" + "---|" * len(head))
    for m in methods:
        md.append(
            "| " + " | ".join([m] + [
                f"{agg[(m, b)]['ratio']:.3f}" if (m, b) in agg else "" for b in budgets
            ]) + " |"
        )  # fmt: skip
    failed = [c for c in cells if c.get("status") != "ok" and in_grid(cfg, c)]
    if failed:
        md.append("\n## Failed cells\n")
        md += _failed_lines(failed)
    rows: list[list[Any]] = [["method", "budget", "n", "bytes", "ratio"]
                             + [f"{k}_{s}" for k in [*cfg.metrics, *cfg.show] for s in ("mean", "std")]]  # fmt: skip
    for (m, b), r in sorted(agg.items()):
        rows.append([m, b, r["n"], int(r["bytes"]), round(r["ratio"], 5)]
                    + [round(x, 6) for k in [*cfg.metrics, *cfg.show] for x in r[k]])  # fmt: skip
    tm = ["# timing (means over seeds; latency: model forward on CPU, median of 20)\n",
          "| method | budget | train s | train samples/s | latency b=1 ms | latency b=1024 ms | parameters |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (m, b), r in sorted(agg.items(), key=lambda kv: (methods.index(kv[0][0]), -kv[0][1])):
        params = "-" if math.isnan(r["params"]) else f"{int(r['params']):,}"
        tm.append(
            f"| {m} | {b:g} | {r['train_s']:.1f} | {r['samples_per_s']:,.0f} | "
            f"{r['lat1']:.2f} | {r['lat1024']:.2f} | {params} |"
        )
    return "\n".join(md) + "\n", rows, "\n".join(tm) + "\n"


def pareto_plot(cfg: BenchConfig, cells: list[dict[str, Any]], path: Path) -> None:
    """Primary metric against memory (log axis), one line per method, ``full`` a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(cfg, cells)
    metric = cfg.metrics[0]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    # 14 methods outrun one 10-colour cycle: 20 colours, and markers that differ as well
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP<>Xph"
    for i, m in enumerate(cfg.methods):
        pts = sorted(
            (r["bytes"], r[metric][0], r[metric][1]) for (mm, _), r in agg.items() if mm == m
        )
        pts = [p for p in pts if not math.isnan(p[1])]
        if not pts:
            continue
        xs, ys, es = zip(*pts, strict=True)
        if m == "full":
            ax.errorbar(xs, ys, yerr=es, fmt="k*", markersize=12, label="full", zorder=5)
        else:
            ax.errorbar(xs, ys, yerr=es, marker=markers[i % len(markers)], capsize=2, label=m,
                        color=colors[(2 * i + i // 10) % len(colors)])  # fmt: skip
    # a shown metric in the primary metric's units (test/oracle_auc next to test/auc) is a
    # ceiling or reference line
    for k in cfg.show:
        xs = _shown_values(cfg, cells, k)
        if xs and k.endswith(metric.rsplit("/", 1)[-1]):
            ax.axhline(statistics.fmean(xs), color="grey", ls="--", lw=1, label=k)
    ax.set_xscale("log")
    ax.set_xlabel("embedding memory (bytes, log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"{cfg.name}: {metric} against memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _shown_values(cfg: BenchConfig, cells: list[dict[str, Any]], key: str) -> list[float]:
    """``key`` of every finished cell of the grid that has it."""
    return [
        c["metrics"][key]
        for c in cells
        if c.get("status") == "ok" and in_grid(cfg, c) and key in c["metrics"]
    ]


def _shown_lines(cfg: BenchConfig, cells: list[dict[str, Any]]) -> list[str]:
    """The ``show`` metrics over every finished cell: values of the data rather than of a
    method (the oracle AUC of the synthetic generator), so one figure each, with its range
    when the cells disagree."""
    lines = []
    for k in cfg.show:
        xs = _shown_values(cfg, cells, k)
        if not xs:
            continue
        lo, hi = min(xs), max(xs)
        spread = "" if math.isclose(lo, hi, abs_tol=5e-5) else f" (range {lo:.4f} to {hi:.4f})"
        lines.append(f"`{k}`: {statistics.fmean(xs):.4f}{spread}, over {len(xs)} finished cells.\n")
    return lines


def _failed_lines(failed: list[dict[str, Any]]) -> list[str]:
    """One line per method and error, budgets and seeds listed (budget errors differ only
    in the budget they name, so those of one method share a line)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in failed:
        err = re.sub(r"budget \S+ \(\d+ bytes of \d+\)", "the budget", c.get("error", ""))
        groups.setdefault((c["method"], err), []).append(c)
    lines = []
    for (method, err), cs in groups.items():
        budgets = ", ".join(f"{b:g}" for b in sorted({c["budget"] for c in cs}, reverse=True))
        seeds = ", ".join(str(s) for s in sorted({c["seed"] for c in cs}))
        lines.append(f"- `{method}` at {budgets} (seeds {seeds}): {err}")
    return lines


def build_report(out: Path) -> list[Path]:
    """Write table.md, table.csv, timing.md and pareto.png into ``out`` from its cells."""
    cfg, cells = load(out)
    md, rows, tm = tables(cfg, cells)
    (out / "table.md").write_text(md)
    with (out / "table.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (out / "timing.md").write_text(tm)
    pareto_plot(cfg, cells, out / "pareto.png")
    return [out / n for n in ("table.md", "table.csv", "timing.md", "pareto.png")]
