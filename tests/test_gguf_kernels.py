"""The compiled products with a GGUF file's own blocks (Q8_0, Q4_0, Q4_K, Q6_K) and the layers
around them (engine/kernels/gguf_linear.py), against gguf-py's dequantization as the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import gguf_linear, native, native_variants
from engine.kernels.gguf_linear import KERNEL_TYPES, GGUFEmbedding, GGUFLinear

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

Q4_0, Q8_0, Q4_K, Q6_K = 2, 8, 12, 14
NAMES = {Q4_0: "Q4_0", Q8_0: "Q8_0", Q4_K: "Q4_K", Q6_K: "Q6_K"}
TOLERANCE = {torch.bfloat16: 1.5e-2, torch.float32: 1e-2}
"""Bounds on the error relative to the largest output, where a test has no sharper one: the products
round x to 8-bit integers per 32 inputs (llama.cpp's Q8_0 rule), which on random x and weights
measures ~4.5e-3 (float32 output); bfloat16 output adds its own rounding (2^-9 of each output)."""


def blocks(qtype: int, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Random valid blocks [rows, row_bytes]: Q8_0/Q4_0 by gguf-py's quantizer from random floats;
    Q4_K/Q6_K random bytes with small finite float16 d (and dmin)."""
    rng = np.random.default_rng(seed)
    kind = gguf.GGMLQuantizationType(qtype)
    if qtype in (Q4_0, Q8_0):
        data = gguf.quants.quantize(
            (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32), kind
        )
        return torch.from_numpy(np.ascontiguousarray(data))
    weights, nbytes = gguf_linear.KERNEL_BLOCKS[qtype]
    data = rng.integers(0, 256, (rows, cols // weights, nbytes), dtype=np.uint8)
    scale = (rng.random((rows, cols // weights, 2)) * 2e-3 + 1e-4).astype(np.float16).view(np.uint8)
    if qtype == Q4_K:  # d, dmin at bytes 0-3
        data[..., 0:4] = scale.reshape(rows, cols // weights, 4)
    else:  # Q6_K: d at bytes 208-209
        data[..., 208:210] = scale[..., 0:2]
    return torch.from_numpy(data.reshape(rows, -1).copy())


def reference(raw: torch.Tensor, qtype: int) -> torch.Tensor:
    """gguf-py's dequantized weights, float32 [rows, cols]."""
    return torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType(qtype)))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def assert_within_rounding_bound(got, x, weight, dtype, where) -> None:
    """Each output within what rounding x to 8 bits per 32 inputs can change it, plus float32
    arithmetic and the output's own rounding:
        |y_i - sum_j w_ij x_j| <= sum_b (max_{j in b} |x_j| / 254) * sum_{j in b} |w_ij|
                                  + 1e-5 * sum_j |w_ij x_j| + 2^-8 |y_i| (bfloat16 output)
    (x rounded to q = round(x * 127 / max|x_b|) is off by at most half a step, max|x_b| / 254)."""
    x = x.to(dtype).double().reshape(-1, weight.shape[1])
    want = x @ weight.double().T
    step = x.abs().reshape(x.shape[0], -1, 32).amax(-1) / 254  # [m, blocks]
    w_l1 = weight.double().abs().reshape(weight.shape[0], -1, 32).sum(-1)  # [n, blocks]
    bound = step @ w_l1.T + 1e-5 * (x.abs() @ weight.double().abs().T)
    if dtype == torch.bfloat16:
        bound = bound * (1 + 2**-8) + 2**-8 * want.abs()
    err = (got.double().reshape(want.shape) - want).abs()
    assert (err <= bound).all(), (where, (err / bound).max().item())


SHAPES = [(37, 256), (5, 512), (256, 2048), (130, 768)]
"""Odd row counts (chunks that do not divide), the TinyLlama K/V shape, whole K superblocks."""


@pytest.mark.parametrize("qtype", sorted(KERNEL_TYPES), ids=lambda q: NAMES[q])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_product_equals_the_dequantized_float_product(kernel, qtype: int, shape) -> None:
    rows, cols = shape
    raw = blocks(qtype, rows, cols, seed=rows + cols)
    weight = reference(raw, qtype).double()
    x = torch.randn(1, cols, generator=torch.Generator().manual_seed(rows))
    for dtype in (torch.bfloat16, torch.float32):
        want = x.to(dtype).double() @ weight.T
        for threads in (1, 2):
            got = kernel.gguf_matvec(x.to(dtype), raw, qtype, threads)
            assert got.dtype == dtype and got.shape == (1, rows)
            assert_within_rounding_bound(got, x, weight, dtype, (NAMES[qtype], dtype, threads))
            assert relative_error(got, want) <= TOLERANCE[dtype], (NAMES[qtype], dtype, threads)


@pytest.mark.parametrize("qtype", sorted(KERNEL_TYPES), ids=lambda q: NAMES[q])
@pytest.mark.parametrize("shape", [(37, 256), (256, 2048), (130, 768)], ids=str)
def test_weights_written_out_are_gguf_pys_exactly(kernel, qtype: int, shape) -> None:
    rows, cols = shape
    raw = blocks(qtype, rows, cols, seed=7 + rows)
    weight = reference(raw, qtype)
    for threads in (1, 2):
        assert torch.equal(kernel.gguf_weights(raw, qtype, cols, torch.float32, threads), weight.T)
    assert torch.equal(
        kernel.gguf_weights(raw, qtype, cols, torch.bfloat16, 2), weight.to(torch.bfloat16).T
    )
    part = slice(3, rows - 2)  # a slice that starts and ends inside a 16-row tile
    assert torch.equal(
        kernel.gguf_weights(raw, qtype, cols, torch.float32, 2, part), weight[part].T
    )


def test_products_sharing_x_in_one_job_equal_each_alone(kernel) -> None:
    cols = 512
    weights = [
        (blocks(q, rows, cols, seed=rows), q) for q, rows in ((Q4_K, 96), (Q4_K, 32), (Q6_K, 37))
    ]
    x = torch.randn(1, cols).to(torch.bfloat16)
    together = kernel.gguf_matvec_many(x, weights, 2)
    for (raw, qtype), got in zip(weights, together, strict=True):
        assert torch.equal(got, kernel.gguf_matvec(x, raw, qtype, 2))


def test_non_finite_activations_come_out_as_nan(kernel) -> None:
    raw = blocks(Q4_0, 8, 64)
    x = torch.randn(1, 64)
    x[0, 40] = float("inf")
    assert kernel.gguf_matvec(x, raw, Q4_0, 2).isnan().all()


def test_shapes_the_kernel_cannot_take_are_refused(kernel) -> None:
    raw = blocks(Q8_0, 4, 64)
    with pytest.raises(RuntimeError):
        kernel.gguf_matvec(torch.randn(1, 64), raw, 3, 1)  # Q4_1: no compiled product
    with pytest.raises(RuntimeError):
        kernel.gguf_matvec(torch.randn(1, 64), raw[:, :-1].contiguous(), Q8_0, 1)


def _layer(qtype: int, rows: int, cols: int, dtype: torch.dtype) -> tuple[GGUFLinear, torch.Tensor]:
    layer = GGUFLinear(cols, rows, qtype, dtype)
    layer.raw = blocks(qtype, rows, cols, seed=3)
    return layer, reference(layer.raw, qtype)


@pytest.mark.parametrize("qtype", sorted(KERNEL_TYPES), ids=lambda q: NAMES[q])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_layer_computes_like_f_linear_on_the_dequantized_weight(kernel, qtype, dtype) -> None:
    layer, weight = _layer(qtype, 80, 512, dtype)
    g = torch.Generator().manual_seed(1)
    for use in (kernel, None):
        layer.use_native(use)
        assert layer.native is use
        for tokens in (1, 2, gguf_linear.GEMM_ROWS, 70):
            x = torch.randn(1, tokens, 512, generator=g).to(dtype)
            want = F.linear(x.double(), weight.double())
            got = layer(x)
            assert got.dtype == dtype and got.shape == (1, tokens, 80)
            # many rows: a GEMM on exact weights in x's dtype (bfloat16 rounds the weight)
            assert relative_error(got, want) <= TOLERANCE[dtype] * (2 if tokens > 1 else 1)


def test_prefill_writes_the_weight_out_a_slice_of_rows_at_a_time(kernel, monkeypatch) -> None:
    layer, weight = _layer(Q6_K, 100, 256, torch.float32)
    layer.use_native(kernel)
    monkeypatch.setattr(gguf_linear, "GEMM_ROWS", 16)
    calls = []
    original = kernel.gguf_weights

    def spy(raw, qtype, cols, dtype, threads, rows=None):
        calls.append(rows)
        return original(raw, qtype, cols, dtype, threads, rows)

    monkeypatch.setattr(kernel, "gguf_weights", spy)
    monkeypatch.setattr(gguf_linear, "WRITE_OUT_BYTES", 32 * 256 * 4)  # 32 rows of float32
    x = torch.randn(gguf_linear.GEMM_ROWS + 1, 256)
    got = layer(x)
    assert calls == [slice(0, 32), slice(32, 64), slice(64, 96), slice(96, 100)]
    assert torch.allclose(got, x @ weight.T, rtol=1e-5, atol=1e-5)


def test_a_type_without_a_kernel_runs_dequantized(kernel) -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((48, 64)) * 0.05).astype(np.float32)
    raw = torch.from_numpy(
        np.ascontiguousarray(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q5_0))
    )
    layer = GGUFLinear(64, 48, 6, torch.float32)  # Q5_0
    layer.raw = raw
    layer.use_native(kernel)
    assert layer.native is None and 6 not in KERNEL_TYPES
    x = torch.randn(2, 64)
    assert torch.allclose(layer(x), x @ reference(raw, 6).T, rtol=1e-5, atol=1e-6)


def test_fused_projection_is_one_job_below_gemm_rows(kernel) -> None:
    q, _ = _layer(Q4_K, 64, 256, torch.bfloat16)
    v, _ = _layer(Q6_K, 32, 256, torch.bfloat16)
    for layer in (q, v):
        layer.use_native(kernel)
    for tokens in (1, 3, 11):
        x = torch.randn(1, tokens, 256).to(torch.bfloat16)
        outs = gguf_linear.fused_projection([q, v], x)
        assert outs is not None and outs[0].shape == (1, tokens, 64)
        assert torch.equal(outs[0], q(x)) and torch.equal(outs[1], v(x))
    many = torch.randn(1, gguf_linear.GEMM_ROWS, 256)
    assert gguf_linear.fused_projection([q, v], many) is None  # Q6_K writes its weight out
    k, _ = _layer(Q4_0, 32, 256, torch.float32)
    k.use_native(kernel)
    outs = gguf_linear.fused_projection([q, k], many)  # both tiled: one integer job, any rows
    assert outs is not None and torch.equal(outs[1], k(many))
    v.use_native(None)
    assert gguf_linear.fused_projection([q, v], x) is None


@pytest.mark.parametrize("qtype", sorted(KERNEL_TYPES), ids=lambda q: NAMES[q])
def test_many_rows_equal_each_row_alone(kernel, qtype: int) -> None:
    """The multi-row product (each weight row read once for up to 8 rows of x, then the next 8)
    gives every row exactly what a one-row product gives it: the same integers, the same order."""
    raw = blocks(qtype, 45, 768, seed=3)
    weight = reference(raw, qtype)
    x = torch.randn(19, 768, generator=torch.Generator().manual_seed(2))
    x[4] *= 1e3  # rows are rounded each with their own scales
    for dtype in (torch.float32, torch.bfloat16):
        xs = x.to(dtype)
        for threads in (1, 2):
            got = kernel.gguf_matvec(xs, raw, qtype, threads)
            assert got.shape == (19, 45) and got.dtype == dtype
            for t in (0, 4, 7, 8, 15, 18):
                assert torch.equal(got[t : t + 1], kernel.gguf_matvec(xs[t : t + 1], raw, qtype, 1))
            assert_within_rounding_bound(got, xs, weight, dtype, (NAMES[qtype], dtype, threads))


@pytest.mark.parametrize(("qtype", "cols"), [(Q4_0, 416), (Q4_0, 2048), (Q4_K, 512)])
def test_four_bit_tiles_give_each_row_what_one_row_gives(kernel, qtype: int, cols: int) -> None:
    """From 8 rows of x the 4-bit products run in tiles of 8 weight rows (rows in the lanes):
    every output equals the one-row product's bit for bit, with weight rows left over after the
    tiles (133 = 16 tiles + 5), groups left over after the vector spans (416 inputs: 13 groups) and
    both thread counts."""
    raw = blocks(qtype, 133, cols, seed=5)
    weight = reference(raw, qtype)
    gen = torch.Generator().manual_seed(9)
    for m in (8, 12, 33):
        x = torch.randn(m, cols, generator=gen)
        x[m // 2] *= 1e3
        for dtype in (torch.float32, torch.bfloat16):
            xs = x.to(dtype)
            for threads in (1, 2):
                got = kernel.gguf_matvec(xs, raw, qtype, threads)
                for t in range(m):
                    one = kernel.gguf_matvec(xs[t : t + 1], raw, qtype, 1)
                    assert torch.equal(got[t : t + 1], one), (m, t, dtype, threads)
                assert_within_rounding_bound(got, xs, weight, dtype, (NAMES[qtype], m, threads))


@pytest.mark.parametrize("qtype", [Q4_0, Q8_0, Q4_K, Q6_K, 6], ids=lambda q: NAMES.get(q, "Q5_0"))
def test_embedding_dequantizes_the_looked_up_rows(qtype: int) -> None:
    if qtype == 6:
        w = (np.random.default_rng(0).standard_normal((50, 256)) * 0.05).astype(np.float32)
        raw = torch.from_numpy(
            np.ascontiguousarray(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q5_0))
        )
    else:
        raw = blocks(qtype, 50, 256)
    emb = GGUFEmbedding(50, 256, qtype, torch.bfloat16)
    emb.raw = raw
    tokens = torch.tensor([[3, 49, 3], [0, 7, 20]])
    got = emb(tokens)
    assert got.shape == (2, 3, 256) and got.dtype == torch.bfloat16
    assert torch.equal(got, reference(raw, qtype)[tokens].to(torch.bfloat16))


BUILT = (native.LIBRARY_DIR / native_variants.library_filename("baseline")).is_file()


@pytest.mark.skipif(not BUILT, reason="installed without a C compiler")
@pytest.mark.parametrize("variant", [v.name for v in native_variants.X86_VARIANTS])
def test_each_build_this_cpu_runs_computes_every_type(variant: str) -> None:
    if not native_variants.is_x86_64(__import__("platform").machine()):
        pytest.skip("x86-64 builds")
    if variant not in native.runnable_variants():
        pytest.skip(f"this CPU cannot execute the {variant} build")
    kernel = native.load_variant(variant)  # self-checked, Q8_0 included
    for qtype in sorted(KERNEL_TYPES):
        raw = blocks(qtype, 70, 512, seed=qtype)
        weight = reference(raw, qtype)
        x = torch.randn(1, 512, generator=torch.Generator().manual_seed(qtype))
        got = kernel.gguf_matvec(x, raw, qtype, 2)
        assert_within_rounding_bound(got, x, weight, torch.float32, (variant, qtype))
        assert torch.equal(kernel.gguf_weights(raw, qtype, 512, torch.float32, 2), weight.T)


def test_project_runs_gguf_layers_sharing_x_as_one_job(kernel, monkeypatch) -> None:
    from engine.kernels.quant import project

    gate, _ = _layer(Q4_K, 64, 256, torch.bfloat16)
    up, _ = _layer(Q4_K, 48, 256, torch.bfloat16)
    for layer in (gate, up):
        layer.use_native(kernel)
    jobs = []
    original = kernel.gguf_matvec_many
    monkeypatch.setattr(kernel, "gguf_matvec_many", lambda *a: jobs.append(1) or original(*a))
    x = torch.randn(1, 1, 256).to(torch.bfloat16)
    outs = project([gate, up], x)
    assert jobs == [1] and outs[0].shape == (1, 1, 64) and outs[1].shape == (1, 1, 48)
    assert torch.equal(outs[0], gate(x)) and torch.equal(outs[1], up(x))


@pytest.mark.parametrize("fast", [True, False])
def test_prefill_gemm_dtype_follows_the_cpu(kernel, monkeypatch, fast: bool) -> None:
    # bfloat16 GEMMs are ~100x slower than float32 on a CPU without AVX512-BF16/AMX (AMD EPYC,
    # AVX2): there the weight is written out in float32 and the result rounded to bfloat16.
    layer, weight = _layer(Q8_0, 40, 256, torch.bfloat16)
    layer.use_native(kernel)
    dtypes = []
    original = kernel.gguf_weights
    monkeypatch.setattr(
        kernel,
        "gguf_weights",
        lambda raw, q, c, d, t, r=None: dtypes.append(d) or original(raw, q, c, d, t, r),
    )
    monkeypatch.setattr(gguf_linear, "fast_bf16_gemm", lambda: fast)
    x = torch.randn(gguf_linear.GEMM_ROWS, 256).to(torch.bfloat16)
    got = layer(x)
    assert dtypes == [torch.bfloat16 if fast else torch.float32] and got.dtype == torch.bfloat16
    assert relative_error(got, x.double() @ weight.double().T) <= 2 * TOLERANCE[torch.bfloat16]
