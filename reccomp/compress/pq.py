"""``pq``: product quantization with frequency-grouped codebooks (post-training).

Each id's embedding is ``S`` sub-vectors of width ``dim / S``; sub-vector ``s`` is one of the
``K`` codewords of codebook ``s``, so an id is stored as ``S`` small integer codes (DPQ, Chen
et al., ICML 2020). MGQE (Kang et al., WWW 2020) gives frequent ids more codewords than rare
ones: the ``F`` most frequent ids choose among all ``K`` codewords, the others only among the
first ``K_lo`` of each codebook, so their codes take fewer bits.

Serving form: remap = the code map, lookup = one TorchRec table of ``S * K`` rows of width
``dim / S`` (stream ``s`` reads row ``s * K + code[x, s]``), decode = the concatenation of the
``S`` pooled sub-vectors (linear: bags pool correctly). The code map is ``codes_`` (every id's
``K_lo``-codes, bit-packed at 1, 2, 4, 8 or 16 bits) plus, for the frequent ids, ``kept_`` (their
ids, sorted, found by binary search as in ``frequency_hash``) and ``hi_codes_``. With ``S = 1``
(the default) the table is ``K`` rows of width ``dim``: one lookup, no decode.

``reccomp compress --method pq`` builds the codes by frequency-weighted k-means in each
sub-space of the trained table (rare ids restricted to the first ``K_lo`` centroids, the
constrained Lloyd iteration of MGQE's nested codebooks); ``--finetune-epochs`` then trains the
codebooks with the codes fixed. The floor is a code per id: ``ceil(n / 8)`` bytes (1-bit codes,
``S = 1``) plus two codewords, 1/512 of a dim-16 fp32 table.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from reccomp.compress.base import (
    BYTES_PER_VALUE,
    BudgetError,
    TableMethod,
    TableSpec,
    TrainedTable,
    ceil_div,
    field_seed,
    in_range,
    index_dtype,
    top_ids,
)
from reccomp.compress.registry import MethodConfig, register

BITS = (1, 2, 4, 8, 16)  # code widths: 8 // b codes per byte below 8 bits, int16 at 16
MAX_CODEWORDS = 2**16


@register("pq")
@dataclass
class PQConfig(MethodConfig):
    """Product quantization with frequency-grouped codebooks (MGQE: Kang et al., "Learning
    Multi-granular Quantized Embeddings for Large-Vocab Categorical Features in Recommender
    Systems", WWW 2020; DPQ: Chen et al., "Differentiable Product Quantization for End-to-End
    Embedding Compression", ICML 2020). Built from a trained model by ``reccomp compress``.

    Args:
        num_subvectors: ``S``, sub-vectors per id (``dim / S`` a multiple of 4). With
            frequency-weighted k-means a sub-space's codewords sit on its most frequent ids,
            so more sub-spaces add combinations, not more exactly kept ids, and cost more
            code bytes and one lookup each: on the synthetic Criteo data at budget 0.01, S = 1,
            2 and 4 gave the same test AUC within run-to-run noise (0.73 +- 0.01).
        codewords: ``K``, codewords per codebook (what frequent ids choose from), at most
            2^16; ``None``: from the budget.
        rare_codewords: ``K_lo <= K``, the codewords rare ids choose from (the first ones of
            each codebook); ``None``: from the budget, or ``K`` (one group) when
            ``codewords`` is given.
        num_frequent: ``F``, the most frequent ids (training counts) that use all ``K``
            codewords; ``None``: from the budget, or 0 when ``codewords`` is given.
        frequency_groups: with a budget, may the fit give frequent ids more codewords.
        kmeans_iters: Lloyd iterations of the post-training k-means.
    """

    num_subvectors: int = 1
    codewords: int | None = None
    rare_codewords: int | None = None
    num_frequent: int | None = None
    frequency_groups: bool = True
    kmeans_iters: int = 25
    size_options: ClassVar[tuple[str, ...]] = ("codewords",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_subvectors < 1:
            raise ValueError(f"pq: num_subvectors must be >= 1, got {self.num_subvectors}")
        if self.kmeans_iters < 1:
            raise ValueError(f"pq: kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.codewords is None:
            if self.rare_codewords is not None or self.num_frequent is not None:
                raise ValueError("pq: rare_codewords and num_frequent need codewords")
            return
        if not 1 <= self.codewords <= MAX_CODEWORDS:
            raise ValueError(f"pq: codewords must be in [1, 2^16], got {self.codewords}")
        if self.rare_codewords is not None and not 1 <= self.rare_codewords <= self.codewords:
            raise ValueError(f"pq: rare_codewords must be in [1, codewords], got "
                             f"{self.rare_codewords}")  # fmt: skip
        if self.num_frequent is not None and self.num_frequent < 0:
            raise ValueError(f"pq: num_frequent must be >= 0, got {self.num_frequent}")
        lo = self.codewords if self.rare_codewords is None else self.rare_codewords
        if lo < self.codewords and not self.num_frequent:
            raise ValueError("pq: rare_codewords < codewords needs num_frequent > 0")


def code_bits(k: int) -> int:
    """Bits of a code into ``k`` codewords: the smallest of 1, 2, 4, 8, 16 that holds k - 1."""
    return next(b for b in BITS if 2**b >= k)


def code_bytes(count: int, s: int, k: int) -> int:
    """Bytes of ``count`` ids' codes, ``s`` each, into ``k`` codewords, bit-packed."""
    return ceil_div(count * s * code_bits(k), 8)


def _id_bytes(n: int) -> int:
    return torch.empty((), dtype=index_dtype(n)).element_size()


def _bytes(n: int, dim: int, s: int, k: int, k_lo: int, f: int) -> int:
    frequent = code_bytes(f, s, k) + f * _id_bytes(n) if f else 0
    return code_bytes(n, s, k_lo) + frequent + k * dim * BYTES_PER_VALUE


def _resolved(c: PQConfig) -> tuple[int, int, int, int]:
    """(S, K, K_lo, F) of a config with ``codewords`` set."""
    k = int(c.codewords)  # type: ignore[arg-type]
    k_lo = k if c.rare_codewords is None else c.rare_codewords
    return c.num_subvectors, k, k_lo, c.num_frequent or 0


def valid_subvectors(dim: int) -> list[int]:
    """Sub-vector counts whose width ``dim / S`` FBGEMM accepts (a multiple of 4)."""
    return [s for s in range(1, dim // 4 + 1) if dim % s == 0 and (dim // s) % 4 == 0]


def _score(n: int, s: int, k: int, k_lo: int, f: int) -> float:
    """A data-free proxy of quality at a fixed ``S``: bits per lookup that tell ids apart,
    the traffic share of the top ``f`` ids taken from a Zipf(1) law (ln f / ln n)."""
    share = math.log(f + 1) / math.log(n + 1) if f else 0.0
    hi = min(s * math.log2(k), math.log2(max(f, 2)))
    lo = min(s * math.log2(max(k_lo, 1)), math.log2(max(n, 2)))
    return share * hi + (1 - share) * lo


class PQTable(TableMethod):
    """Code ``c_s`` of id ``x`` per sub-space ``s``: row ``s * K + c_s`` of one shared table."""

    post_training = True
    needs_counts = True

    def __init__(self, field: str, num_embeddings: int, dim: int, config: PQConfig, **kw) -> None:
        super().__init__(field, num_embeddings, dim, config, **kw)
        s, k, k_lo, f = _resolved(config)
        if s not in valid_subvectors(dim):
            raise ValueError(f"pq: dim {dim} / num_subvectors {s} must be a multiple of 4")
        self.s, self.k, self.k_lo, self.f = s, k, k_lo, min(f, num_embeddings)
        self.width = dim // s
        self.rows = [s * k]
        self.lo_bits, self.hi_bits = code_bits(k_lo), code_bits(k)
        # until from_trained: seeded random codes (a product-code hash), the first ids frequent
        g = torch.Generator().manual_seed(field_seed(field, self.seed))
        lo = torch.randint(0, k_lo, (num_embeddings, s), generator=g)
        hi = torch.randint(0, k, (self.f, s), generator=g)
        self.register_buffer("codes_", pack(lo, self.lo_bits))
        self.register_buffer("hi_codes_", pack(hi, self.hi_bits))
        self.register_buffer("kept_", torch.arange(self.f, dtype=index_dtype(num_embeddings)))
        self.stats: dict[str, float] = {}

    def tables(self) -> list[TableSpec]:
        return [TableSpec("", self.rows[0], self.width, lookups=self.s)]

    # -- sizes ---------------------------------------------------------------------------------
    @classmethod
    def table_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        s, k, k_lo, f = _resolved(config)
        return _bytes(num_embeddings, dim, s, k, k_lo, min(f, num_embeddings))

    @classmethod
    def min_bytes(cls, num_embeddings: int, dim: int, config: MethodConfig) -> int:
        s = config.num_subvectors
        return _bytes(num_embeddings, dim, s, min(2, num_embeddings), 2, 0)

    @classmethod
    def fit_budget(cls, num_embeddings, dim, config, budget_bytes):
        n, row = num_embeddings, dim * BYTES_PER_VALUE
        s = config.num_subvectors
        if s not in valid_subvectors(dim):
            raise ValueError(f"pq: dim {dim} / num_subvectors {s} must be a multiple of 4")
        best: tuple[tuple[float, int], PQConfig] | None = None
        for b_lo in BITS:
            lo_bytes = code_bytes(n, s, 2**b_lo)
            if lo_bytes + min(2, n) * row > budget_bytes:
                break  # more bits only cost more
            # one group: as many codewords as the codes and the budget allow
            k = min(2**b_lo, n, (budget_bytes - lo_bytes) // row)
            # (k within fewer bits: those bits would do)
            cands = [(k, k, 0)] if b_lo == 1 or k > 2 ** (b_lo // 2) else []
            # two groups: frequent ids get 2^b_hi codewords (or fewer), rare ones 2^b_lo
            for b_hi in (b for b in BITS if config.frequency_groups and b > b_lo):
                for k_hi in sorted({min(2**j, n) for j in range(b_lo + 1, b_hi + 1)}):
                    if code_bits(k_hi) != b_hi or k_hi <= 2**b_lo:
                        continue
                    rest = budget_bytes - lo_bytes - k_hi * row
                    per_id = _id_bytes(n) + s * b_hi / 8
                    f = min(int(rest // per_id), n)
                    while f > 0 and _bytes(n, dim, s, k_hi, 2**b_lo, f) > budget_bytes:
                        f -= 1
                    if f > 0:
                        cands.append((k_hi, 2**b_lo, f))
            for k_hi, k_lo, f in cands:
                key = (_score(n, s, k_hi, k_lo, f), _bytes(n, dim, s, k_hi, k_lo, f))
                if best is None or key > best[0]:
                    best = key, dataclasses.replace(
                        config, num_subvectors=s, codewords=int(k_hi),
                        rare_codewords=int(k_lo), num_frequent=int(f),
                    )  # fmt: skip
        if best is None:
            raise BudgetError(
                f"pq stores a code per id and sub-vector: at least ceil(n / 8) bytes (1-bit "
                f"codes) plus two codewords, {cls.min_bytes(n, dim, config)} bytes for {n} "
                f"rows of dim {dim}; {budget_bytes} bytes given"
            )
        return best[1]

    # -- post-training fit ---------------------------------------------------------------------
    def from_trained(self, src: TrainedTable) -> list[torch.Tensor]:
        """Frequency-weighted k-means in each sub-space of the trained table; the frequent
        ids (top ``F`` by training count) choose among all ``K`` centroids, the rest among
        the first ``K_lo``. Returns the codebook rows, (S * K, dim / S)."""
        if src.counts is None:
            raise ValueError(
                "pq needs the rows' training frequencies (reccomp compress reads them)"
            )
        n, s = self.num_embeddings, self.s
        counts = src.counts.double().clamp_min(0)
        weight = (counts + 0.01).float()  # (n,): a row seen once weighs 100 unseen rows
        kept = torch.from_numpy(top_ids(np.asarray(counts), self.f).astype(np.int64))
        frequent = torch.zeros(n, dtype=torch.bool)
        frequent[kept] = True
        x = src.dense.float().reshape(n, s, self.width)  # (n, S, w)
        g = torch.Generator().manual_seed(field_seed(self.field, self.seed))
        books, lo, hi, err = [], [], [], 0.0
        for j in range(s):
            xj = x[:, j]  # (n, w)
            book, code = weighted_kmeans(
                xj, weight, self.k, self.k_lo, frequent, self.config.kmeans_iters, g
            )
            books.append(book)
            hi.append(code[kept])  # (F,)
            # rare ids' codes are below K_lo already; frequent ones also get their nearest
            # rare codeword there (unused while they are kept: a valid fallback)
            low = code.clone()
            low[frequent] = nearest(xj[frequent], book[: self.k_lo])  # (F,)
            lo.append(low)
            err += float((weight * (book[code] - xj).pow(2).sum(1)).sum())
        with torch.no_grad():
            self.codes_.copy_(pack(torch.stack(lo, 1), self.lo_bits))
            self.hi_codes_.copy_(pack(torch.stack(hi, 1), self.hi_bits))
            self.kept_.copy_(kept.to(self.kept_.dtype))
        total = float((weight * x.reshape(n, -1).pow(2).sum(1)).sum())
        self.stats = {"pq_relative_error": err / max(total, 1e-12)}
        return [torch.cat(books).contiguous()]  # (S * K, w)

    # -- lookup --------------------------------------------------------------------------------
    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids -> (N, S) int64 codes (ids outside the table: row 0's)."""
        x = in_range(ids, self.num_embeddings)  # (N,)
        sub = torch.arange(self.s, device=ids.device)  # (S,)
        code = unpack(self.codes_, x.unsqueeze(1) * self.s + sub, self.lo_bits)  # (N, S)
        if self.f > 0:
            small = x.to(self.kept_.dtype)  # same dtype for the search
            pos = torch.searchsorted(self.kept_, small).clamp(max=self.f - 1)  # (N,)
            hit = self.kept_[pos] == small
            hi = unpack(self.hi_codes_, pos.unsqueeze(1) * self.s + sub, self.hi_bits)
            code = torch.where(hit.unsqueeze(1), hi, code)
        return code

    def remap(self, ids: torch.Tensor) -> list[torch.Tensor]:
        sub = torch.arange(self.s, device=ids.device)
        rows = self.codes(ids) + sub * self.k  # (N, S): stream s reads codebook s
        return [rows[:, j] for j in range(self.s)]

    def decode(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        if len(pooled) == 1:
            return pooled[0]
        return torch.cat(pooled, dim=-1)  # S x (..., w) -> (..., dim)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(m, S) codes in ``[0, 2^bits)`` -> flat packed buffer: ``8 // bits`` codes per uint8
    below 8 bits (code ``e`` in byte ``e // (8 // bits)``, low bits first), uint8 at 8,
    int16 (two's complement of the uint16 code) at 16.

    >>> pack(torch.tensor([[1], [2], [3], [0]]), 2)
    tensor([57], dtype=torch.uint8)
    """
    flat = codes.reshape(-1).cpu().numpy().astype(np.int64)
    if bits == 16:
        return torch.from_numpy(flat.astype(np.uint16).view(np.int16).copy())
    per = 8 // bits
    pad = np.zeros(ceil_div(len(flat), per) * per, dtype=np.int64)
    pad[: len(flat)] = flat
    shifts = np.arange(per, dtype=np.int64) * bits
    return torch.from_numpy((pad.reshape(-1, per) << shifts).sum(1).astype(np.uint8))


def unpack(packed: torch.Tensor, index: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes number ``index`` (any shape, int64) of a :func:`pack` buffer, as int64."""
    if bits >= 8:
        return packed[index].long() & ((1 << bits) - 1)  # int16 -> uint16 values
    per = 8 // bits
    byte = packed[torch.div(index, per, rounding_mode="floor")].long()
    return (byte >> (index.remainder(per) * bits)) & ((1 << bits) - 1)


def nearest(
    x: torch.Tensor,
    book: torch.Tensor,
    k_lo: int | None = None,
    frequent: torch.Tensor | None = None,
    chunk: int = 1 << 22,
) -> torch.Tensor:
    """(n,) index of the nearest row of ``book`` (k, w) for each row of ``x`` (n, w); rows
    without ``frequent`` (n,) set choose among the first ``k_lo`` only."""
    step = max(1, chunk // max(len(book), 1))
    out = []
    for i in range(0, len(x), step):
        d = torch.cdist(x[i : i + step], book)  # (b, k)
        if k_lo is not None and frequent is not None and k_lo < len(book):
            d[~frequent[i : i + step], k_lo:] = math.inf
        out.append(d.argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def _seed(
    x: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    k_lo: int,
    frequent: torch.Tensor,
    g: torch.Generator,
) -> torch.Tensor:
    """(k, w) initial centroids: weighted k-means++ (Arthur and Vassilvitskii, 2007), the
    first ``k_lo`` drawn from all rows, the others from the frequent rows. Above 2^28
    distance updates (large codebooks of large tables) weighted sampling without
    replacement stands in (Efraimidis-Spirakis keys), frequent rows first."""
    n = len(x)
    if k * n > 2**28:
        key = torch.rand(n, generator=g).clamp_min(1e-12).log() / weight  # larger first
        first = torch.topk(key, min(k_lo, n)).indices
        key[first] = -math.inf
        key[~frequent] = key[~frequent] - 1e30  # frequent rows before rare ones
        rest = torch.topk(key, min(k - len(first), n - len(first))).indices
        picks = torch.cat([first, rest])
        return x[torch.cat([picks, picks[torch.arange(k - len(picks)) % len(picks)]])].clone()
    dist = torch.full((n,), math.inf)  # (n,) squared distance to the nearest pick
    picks = []
    for i in range(k):
        pool = weight if i < k_lo else weight * frequent
        p = pool if i == 0 else pool * dist
        if not p.sum() > 0:  # every eligible row is a centroid already: any row left
            p = weight * dist if i > 0 and (weight * dist).sum() > 0 else weight
        j = int(torch.multinomial(p, 1, generator=g))
        picks.append(j)
        dist = torch.minimum(dist, (x - x[j]).pow(2).sum(1))
    return x[picks].clone()


def weighted_kmeans(
    x: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    k_lo: int,
    frequent: torch.Tensor,
    iters: int,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Lloyd iteration with nested codebooks: rows with ``frequent`` set choose
    among all ``k`` centroids, the others among the first ``k_lo``.

    Args:
        x: (n, w) points; weight: (n,) > 0; frequent: (n,) bool.

    Returns:
        (k, w) centroids and (n,) codes.

    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    >>> book, code = weighted_kmeans(x, torch.ones(4), 2, 2, torch.zeros(4, dtype=torch.bool),
    ...                              10, torch.Generator().manual_seed(0))
    >>> code[0] == code[1] != code[2] == code[3]
    tensor(True)
    """
    n = len(x)
    book = _seed(x, weight, k, k_lo, frequent, g)
    code = torch.zeros(n, dtype=torch.int64)
    for it in range(iters):
        new = nearest(x, book, k_lo, frequent)
        if it > 0 and torch.equal(new, code):
            break
        code = new
        mass = torch.zeros(k).index_add_(0, code, weight)  # (k,)
        sums = torch.zeros(k, x.shape[1]).index_add_(0, code, x * weight[:, None])
        used = mass > 0
        book[used] = sums[used] / mass[used, None]  # empty centroids stay where they are
    return book, code


PQConfig.module = PQTable
