"""Time GraphHash's clustering of a training graph at several budgets.

Prepares (or reuses) the MovieLens data at ``--data-root`` for retrieval, then fits the
``graph_hash`` collection (Leiden resolution search included) at each budget and prints the
clusters found, the rows they give, the resolution and the wall time.

    python benchmarks/graph_clustering.py --data-root ../shared/datasets/ml-1m-head
"""

from __future__ import annotations

import argparse
import time

from reccomp.compress import FitData, build_collection
from reccomp.data.datamodule import RecDataModule
from reccomp.modules.embedding import EmbeddingSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.01])
    a = p.parse_args()
    dm = RecDataModule(dataset=a.dataset, root=a.data_root, task="retrieval")
    schema = dm.prepare(verbose=False)
    t0 = time.perf_counter()
    data = FitData.from_schema(schema)
    users, _ = data.interactions()
    print(
        f"{schema.name}: {schema.field(schema.user_field).cardinality} user rows, "
        f"{schema.field(schema.item_field).cardinality} item rows, {len(users):,} training "
        f"interactions (loaded in {time.perf_counter() - t0:.2f} s)"
    )
    print(
        f"{'budget':>7}{'target rows':>13}{'clusters u+i':>14}{'resolution':>12}{'runs':>6}{'seconds':>9}"
    )
    for b in a.budgets:
        spec = EmbeddingSpec(method="graph_hash", budget=b, dim=a.dim)
        coll = build_collection(schema, spec)
        target = sum(m.rows[0] for m in coll.tables)
        t0 = time.perf_counter()
        coll.fit(data)
        secs = time.perf_counter() - t0
        st = coll.tables[0].stats
        got = sum(m.rows[0] for m in coll.tables)
        runs = int(st["leiden_runs"])
        print(f"{b:>7}{target:>13}{got:>14}{st['resolution']:>12.3f}{runs:>6}{secs:>9.2f}")


if __name__ == "__main__":
    main()
