"""The export contract over every registered method: the exported program predicts what the
eager model predicts, and a quantized collection counts the bytes FBGEMM stores."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from reccomp.export.program import QUANTIZE, build_program, export_program, quantize_storage
from reccomp.models import DLRM
from tests.compress.test_contract import CASES, SCHEMA, batch, build

NUM_DENSE = 3


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}{c[1] or ''}")
def case(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param


def _model(case: tuple[str, dict]) -> DLRM:
    torch.manual_seed(0)
    return DLRM(build(*case), NUM_DENSE, bottom_mlp=(16, 32), top_mlp=(16,)).eval()


def _inputs(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kjt = batch(b=b, seed=seed, hi=None)
    dense = torch.randn(b, NUM_DENSE, generator=torch.Generator().manual_seed(seed))
    return dense, kjt.values().long(), kjt.lengths().long()


def test_exported_fp32_program_matches_eager_model(case: tuple[str, dict]) -> None:
    model = _model(case)
    prog, dtypes = build_program(model, SCHEMA.feature_names, "ctr")
    assert set(dtypes.values()) == {"fp32"}
    ep, min_batch = export_program(prog, _inputs(16, 0))
    # methods with two lookups per id (qr, double hashing) reshape by the batch: exported
    # for batches of 2 and more (the predictor repeats a single row)
    assert min_batch in (1, 2)
    program = ep.module()
    for b, seed in ((16, 1), (5, 2), (64, 3), (1, 4)):  # other batch sizes and value counts
        if b < min_batch:
            continue
        dense, values, lengths = _inputs(b, seed)
        kjt = KeyedJaggedTensor(keys=SCHEMA.feature_names, values=values, lengths=lengths)
        with torch.no_grad():
            want = model(dense, kjt)
            raw, prob = program(dense, values, lengths)
        torch.testing.assert_close(raw, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(prob, torch.sigmoid(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("quantize", [q for q in QUANTIZE if q != "none"])
def test_quantized_bytes_are_what_fbgemm_stores(case: tuple[str, dict], quantize: str) -> None:
    coll = build(*case)
    serving = coll.to_serving()
    dtypes = quantize_storage(serving, quantize)
    fp32_storage = sum(t.rows * t.width * 4 for m in coll.tables for t in m.tables())
    maps = coll.memory_bytes() - fp32_storage
    stored = sum(
        v.numel() * v.element_size()
        for v in [*serving.storage.buffers(), *serving.storage.parameters()]
    )
    # the quantized collection's TBEs are not submodules and hold their rows outside buffers
    for tbe in getattr(serving.storage, "_emb_modules", []):
        stored += tbe.weights_host.numel() * tbe.weights_host.element_size()
    quantized = serving.memory_bytes() - maps
    assert abs(quantized - stored) <= 0.01 * stored
    if any(d != "fp32" for d in dtypes.values()):
        assert serving.memory_bytes() < coll.memory_bytes()
    kjt = batch(b=8, seed=4)
    with torch.no_grad():
        err = (serving(kjt).values() - coll(kjt).values()).abs().max()
    scale = coll(kjt).values().abs().max()
    assert err <= {"fp16": 1e-2, "int8": 5e-2, "int4": 0.3}[quantize] * max(float(scale), 1.0)
