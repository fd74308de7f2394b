"""PCA of dense layers' outputs (the dense half of ``afm``, Yu et al., KDD 2024).

A linear layer ``y = W x + b`` whose outputs over training batches have mean ``mu`` and
leading principal directions ``U_k`` (out x k) becomes two layers,
``x -> U_k^T W x`` (k x in, no bias) and ``z -> U_k z + (U_k U_k^T (b - mu) + mu)``, which
give ``mu + U_k U_k^T (y - mu)``: exact on the directions the data uses. A layer is replaced
only where the pair holds fewer parameters. Statistics are taken once on the original model.

Example::

    >>> report = pca_dense_layers(task.model, run, ratio=0.25, skip=task.embeddings)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _linears(
    model: nn.Module, skip: nn.Module | None
) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(path, parent, attribute, layer) of every linear layer outside ``skip``."""
    skipped = {id(m) for m in skip.modules()} if skip is not None else set()
    out = []
    for ppath, parent in model.named_modules():
        if id(parent) in skipped:
            continue
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and id(child) not in skipped:
                out.append((f"{ppath}.{name}" if ppath else name, parent, name, child))
    return out


def factorize_linears(model: nn.Module, ranks: dict[str, int]) -> None:
    """Give the layers named in ``ranks`` (paths in ``model``) their two-layer shape
    (weights follow from a checkpoint): how a compressed model is rebuilt from its config."""
    found = {path: (parent, name, lin) for path, parent, name, lin in _linears(model, None)}
    for path, k in ranks.items():
        if path not in found:
            raise ValueError(f"low_rank_dense: {type(model).__name__} has no linear layer {path!r}")
        parent, name, lin = found[path]
        pair = nn.Sequential(
            nn.Linear(lin.in_features, k, bias=False), nn.Linear(k, lin.out_features)
        ).to(lin.weight.device)
        setattr(parent, name, pair)


@torch.no_grad()
def pca_dense_layers(
    model: nn.Module,
    run: Callable[[], None],
    ratio: float,
    skip: nn.Module | None = None,
) -> dict[str, Any]:
    """Replace ``model``'s linear layers by their output-PCA pairs, keeping
    ``k = max(1, round(ratio * min(in, out)))`` components.

    ``run()`` feeds training batches through the model (statistics are gathered by hooks).
    Returns bytes before and after of the layers replaced, and their ranks by path (what
    the task's ``low_rank_dense`` takes to rebuild the shape).
    """
    if not 0 < ratio < 1:
        raise ValueError(f"dense ratio must be in (0, 1), got {ratio}")
    layers = _linears(model, skip)
    stats: dict[int, list[Any]] = {}

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        y = out.detach().double().reshape(-1, out.shape[-1])  # (N, out)
        s = stats.setdefault(id(mod), [0, 0.0, 0.0])
        s[0] += len(y)
        s[1] = s[1] + y.sum(0)
        s[2] = s[2] + y.T @ y

    handles = [lin.register_forward_hook(hook) for _, _, _, lin in layers]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    before = after = 0
    ranks: dict[str, int] = {}
    for path, parent, name, lin in layers:
        n_in, n_out = lin.in_features, lin.out_features
        k = max(1, round(ratio * min(n_in, n_out)))
        if k * (n_in + n_out) + n_out >= n_in * n_out + n_out or id(lin) not in stats:
            continue  # no saving (e.g. the last layer's single output)
        n, s1, s2 = stats[id(lin)]
        mu = s1 / n  # (out,)
        cov = s2 / n - torch.outer(mu, mu)  # (out, out)
        _, vecs = torch.linalg.eigh(cov)
        u = vecs[:, -k:].flip(1)  # (out, k) leading components
        w = lin.weight.double()
        b = lin.bias.double() if lin.bias is not None else torch.zeros(n_out, dtype=torch.float64)
        first = nn.Linear(n_in, k, bias=False)
        second = nn.Linear(k, n_out)
        first.weight.copy_((u.T @ w).float())
        second.weight.copy_(u.float())
        second.bias.copy_((u @ (u.T @ (b - mu)) + mu).float())
        dev = lin.weight.device
        setattr(parent, name, nn.Sequential(first, second).to(dev))
        before += (n_in * n_out + n_out) * 4
        after += (k * (n_in + n_out) + n_out) * 4
        ranks[path] = k
    return {"dense/bytes_before": before, "dense/bytes_after": after, "dense/ranks": ranks}
