"""Loopchat's compiled int8 and int4 kernels (engine/kernels/native.py): they compute what the
dequantized
weights compute, exactly where the arithmetic allows, from any number of threads and callers; the
engine uses them only where they were built and chosen, hands them the decode loop's cores, and
falls back to torch's kernels, with a reason, where they cannot be built."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import native_build
from engine.kernels import native, native_variants
from engine.kernels.quant import INT4_GEMM_ROWS, Int4Linear, Int8Linear
from engine.kernels.quant_math import (
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    quantize_int4,
    quantize_int8,
)
from engine.kernels.threads import ThreadGovernor, decoding
from engine.kernels.tuning import available_kernels

X86_64 = platform.machine() in ("x86_64", "AMD64")
BUILT = sys.platform != "win32" and native_build.compiler() is not None
"""Where the install had a C compiler (CI has one): the builds must be there and load."""


@pytest.fixture
def fresh_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`native.load()` runs again from scratch with an empty LOOPCHAT_HOME, then is reset; a
    developer's own LOOPCHAT_NATIVE must not decide these tests."""
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOOPCHAT_NATIVE", raising=False)
    native.load.cache_clear()
    yield
    native.load.cache_clear()


TORCH_INT4_LAYOUT = pytest.mark.skipif(
    not native.torch_int4_layout_fits(),
    reason="torch packs int4 weights in 32-row blocks on this CPU (no AVX-512): int4 layers "
    "stay on torch's kernel",
)


def _copy_of_builds(folder: Path) -> Path:
    """The installed builds and their digests, copied into `folder` (to damage or remove)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in native.LIBRARY_DIR.iterdir():
        shutil.copy2(path, folder / path.name)
    return folder


def _case(rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, scale = quantize_int8(torch.randn(rows, cols, generator=g) * 0.05)
    return q, scale.float(), torch.randn(1, cols, generator=g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(37, 16), (5, 48), (130, 1040), (512, 2048)])
def test_equals_the_dequantized_weights(kernel, shape: tuple[int, int], dtype) -> None:
    # 1040 columns: eight whole groups of 128 and a partial one; 37 rows: chunks that do not divide.
    q, scale, x = _case(*shape)
    want = F.linear(x.to(dtype).double(), dequantize_int8(q, scale).double())
    for threads in (1, 2, 3):
        got = kernel.int8_matvec(x.to(dtype), q, scale, threads)
        assert got.dtype == dtype and got.shape == (1, shape[0])
        # bfloat16/float16: the output's own rounding; float32: the 16-bit activation rounding
        tol = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 2e-4}[dtype]
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err <= tol, (threads, err.item())


@pytest.mark.parametrize("sz_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 64, 32), (192, 384, 64), (256, 2048, 64), (128, 1024, 128)])
def test_int4_equals_the_dequantized_weights(kernel, shape: tuple[int, int, int], sz_dtype) -> None:
    # The 64-row layout the kernel reads (torch's own packing where torch runs with AVX-512).
    rows, cols, group = shape
    g = torch.Generator().manual_seed(rows + cols)
    q4, sz = quantize_int4(torch.randn(rows, cols, generator=g) * 0.05, group)
    sz = sz.to(sz_dtype).contiguous()
    packed = native.pack_int4_blocks64(q4)
    weight = dequantize_int4(q4, sz, group).double()
    x = torch.randn(1, cols, generator=g)
    for x_dtype in (torch.bfloat16, torch.float16, torch.float32):
        want = x.to(x_dtype).double() @ weight.T
        for threads in (1, 2, 3):
            got = kernel.int4_matvec(x.to(x_dtype), packed, sz, group, threads)
            assert got.dtype == x_dtype and got.shape == (1, rows)
            tol = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 2e-4}[x_dtype]
            err = (got.double() - want).abs().max() / want.abs().max()
            assert err <= tol, (x_dtype, threads, err.item())


def test_int4_is_exact_where_the_arithmetic_is(kernel) -> None:
    # Scale 1 and zero 8 make w = q exactly; integer activations make every sum an exact integer.
    g = torch.Generator().manual_seed(2)
    q4 = torch.randint(0, 16, (128, 256), generator=g, dtype=torch.int32)
    sz = torch.stack((torch.ones(4, 128), torch.full((4, 128), 8.0)), dim=-1)
    x = torch.randint(-100, 101, (1, 256), generator=g).float()
    x[0, ::64] = 100.0  # each group's largest is 100: every value is within 256x of it
    exact = (x.long() @ q4.long().T).double()
    got = kernel.int4_matvec(x, native.pack_int4_blocks64(q4), sz, 64, 2)
    assert torch.equal(got.double(), exact)


@TORCH_INT4_LAYOUT
def test_int4_layer_runs_one_row_on_it(kernel) -> None:
    rows, cols, group = 128, 256, 64
    q4, sz = quantize_int4(torch.randn(rows, cols) * 0.05, group)
    layer = Int4Linear(cols, rows, torch.bfloat16, group)
    layer.weight.copy_(pack_int4(q4, torch.device("cpu")))
    layer.scales_zeros.copy_(sz.bfloat16())
    x = torch.randn(INT4_GEMM_ROWS + 6, cols).bfloat16()
    torch_rows = layer(x)
    layer.use_native(kernel)
    assert layer.native is kernel
    one = layer(x[:1])
    assert torch.allclose(one.float(), torch_rows[:1].float(), atol=1e-2 * one.abs().max().item())
    few = x[: INT4_GEMM_ROWS - 1]
    assert torch.equal(layer(few), torch_rows[: INT4_GEMM_ROWS - 1])  # a few: torch's kernel
    # A prefill chunk: the weight written out in bfloat16 and a GEMM; the same within rounding.
    many = layer(x)
    assert many.dtype == torch.bfloat16 and many.shape == (INT4_GEMM_ROWS + 6, rows)
    assert torch.allclose(many.float(), torch_rows.float(), atol=1e-2 * many.abs().max().item())
    weight = dequantize_int4(q4, sz.bfloat16(), group).bfloat16()
    assert torch.equal(many, x @ weight.T)
    odd = Int4Linear(cols, 80, torch.bfloat16, group)  # not whole 64-row blocks
    odd.use_native(kernel)
    assert odd.native is None


@pytest.mark.parametrize("sz_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 64, 32), (192, 384, 64), (128, 1024, 128)])
def test_int4_weights_written_out_are_the_dequantized_weights(kernel, shape, sz_dtype) -> None:
    rows, cols, group = shape
    g = torch.Generator().manual_seed(rows * 7 + cols)
    q4, sz = quantize_int4(torch.randn(rows, cols, generator=g) * 0.05, group)
    sz = sz.to(sz_dtype).contiguous()
    packed = native.pack_int4_blocks64(q4)
    weight = dequantize_int4(q4, sz, group)  # float32, torch's arithmetic
    for dtype in (torch.bfloat16, torch.float32):
        for threads in (1, 2, 3):
            got = kernel.int4_weights(packed, sz, group, dtype, threads)
            assert got.dtype == dtype and got.shape == (cols, rows)
            # the same float32 formula, rounded once: bit for bit
            assert torch.equal(got, weight.to(dtype).T), (dtype, threads)


@TORCH_INT4_LAYOUT
def test_int4_weights_are_written_out_a_slice_of_rows_at_a_time(kernel, monkeypatch) -> None:
    from engine.kernels import quant

    rows, cols, group = 320, 256, 64
    q4, sz = quantize_int4(torch.randn(rows, cols) * 0.05, group)
    packed, sz = pack_int4(q4, torch.device("cpu")), sz.bfloat16().contiguous()
    whole = kernel.int4_weights(packed, sz, group, torch.bfloat16, 2)
    part = kernel.int4_weights(packed, sz, group, torch.bfloat16, 2, slice(128, 256))
    assert torch.equal(part, whole[:, 128:256])
    with pytest.raises(RuntimeError, match="failed"):
        kernel.int4_weights(packed, sz, group, torch.bfloat16, 2, slice(100, 164))  # unaligned

    layer = Int4Linear(cols, rows, torch.bfloat16, group)
    layer.weight.copy_(packed)
    layer.scales_zeros.copy_(sz)
    layer.use_native(kernel)
    x = torch.randn(INT4_GEMM_ROWS, cols).bfloat16()
    at_once = layer(x)
    # 128 rows' worth of float weight at a time: three slices (128, 128, 64 rows), same result
    monkeypatch.setattr(quant, "INT4_WRITE_OUT_BYTES", 128 * cols * 2)
    assert torch.equal(layer(x), at_once)


@pytest.mark.parametrize("sz_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [(192,), (128, 64, 64), (256, 64, 64, 192)])
def test_int4_products_of_one_x_in_one_job_equal_each_alone(kernel, rows, sz_dtype) -> None:
    cols, group = 384, 64
    g = torch.Generator().manual_seed(sum(rows))
    weights = []
    for n in rows:
        q4, sz = quantize_int4(torch.randn(n, cols, generator=g) * 0.05, group)
        weights.append((native.pack_int4_blocks64(q4), sz.to(sz_dtype).contiguous()))
    x = torch.randn(1, cols, generator=g)
    for x_dtype in (torch.bfloat16, torch.float32):
        for threads in (1, 2, 3):
            together = kernel.int4_matvec_many(x.to(x_dtype), weights, group, threads)
            alone = [kernel.int4_matvec(x.to(x_dtype), w, sz, group, threads) for w, sz in weights]
            assert [t.shape for t in together] == [(1, n) for n in rows]
            # the same rounded x and the same arithmetic per block: bit for bit
            assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))
    with pytest.raises(RuntimeError, match="failed"):
        kernel.int4_matvec_many(x, weights * 5, group, 2)  # more than one job takes


@TORCH_INT4_LAYOUT
def test_projections_sharing_x_go_as_one_job_only_for_a_decode_row(kernel, monkeypatch) -> None:
    from engine.kernels.quant import project

    cols, group = 256, 64
    layers = []
    for n in (128, 64, 64):
        q4, sz = quantize_int4(torch.randn(n, cols) * 0.05, group)
        layer = Int4Linear(cols, n, torch.bfloat16, group)
        layer.weight.copy_(pack_int4(q4, torch.device("cpu")))
        layer.scales_zeros.copy_(sz.bfloat16())
        layer.use_native(kernel)
        layers.append(layer)
    jobs = []
    many = kernel.int4_matvec_many
    monkeypatch.setattr(kernel, "int4_matvec_many", lambda *a: jobs.append(1) or many(*a))
    row = torch.randn(1, cols).bfloat16()
    together = project(layers, row)
    assert len(jobs) == 1
    assert all(torch.equal(t, layer(row)) for t, layer in zip(together, layers, strict=True))
    prefill = torch.randn(5, cols).bfloat16()
    assert all(
        torch.equal(t, layer(prefill))
        for t, layer in zip(project(layers, prefill), layers, strict=True)
    )
    other = Int8Linear(cols, 64, torch.bfloat16)  # another format: layer by layer
    q8, s8 = quantize_int8(torch.randn(64, cols))
    other.weight.copy_(q8)
    other.scales.copy_(s8.bfloat16())
    other.use_native(kernel)
    mixed = project([layers[0], other], row)
    assert len(jobs) == 1 and torch.equal(mixed[1], other(row))


def test_is_exact_where_the_arithmetic_is(kernel) -> None:
    # Integer activations within 256x of each group's largest are represented exactly, products
    # and group sums are exact integers, so the result is the exact dot product, rounded once.
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (64, 256), generator=g, dtype=torch.int8)
    x = torch.randint(-100, 101, (1, 256), generator=g).float()
    x[0, 0] = 100.0  # every group's largest is 100 or close: all values are within 256x
    exact = (q.long() @ x.long().T).T.double()  # |sum| < 2^24: exact in float32 too
    ones = torch.ones(64)
    assert torch.equal(kernel.int8_matvec(x, q, ones, 2).double(), exact)
    assert torch.equal(kernel.int8_matvec(x.bfloat16(), q, ones, 2), exact.bfloat16())


def test_non_finite_activations_come_out_as_nan(kernel) -> None:
    # The generator checks the logits for NaN/inf and says so; a kernel that turned them into
    # plausible numbers would hide a broken model.
    q, scale, x = _case(8, 256)
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[0, 200] = bad
        out = kernel.int8_matvec(x_bad.bfloat16(), q, scale, 2)
        assert torch.isnan(out).all()


def test_concurrent_callers_each_get_their_own_result(kernel) -> None:
    cases = [_case(300, 512, seed) for seed in range(4)]
    wanted = [kernel.int8_matvec(x.bfloat16(), q, s, 1) for q, s, x in cases]
    wrong: list[int] = []

    def caller(i: int) -> None:
        q, s, x = cases[i]
        for _ in range(200):
            if not torch.equal(kernel.int8_matvec(x.bfloat16(), q, s, 2), wanted[i]):
                wrong.append(i)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_int8_layer_runs_one_row_on_it_and_many_rows_on_torch(kernel, monkeypatch) -> None:
    q, scale, _ = _case(96, 160)
    layer = Int8Linear(160, 96, torch.bfloat16)
    layer.weight.copy_(q)
    layer.scales.copy_(scale.bfloat16())
    x = torch.randn(40, 160).bfloat16()
    torch_one = layer(x[:1])
    layer.use_native(kernel)
    calls: list[int] = []
    real = native.NativeKernel.int8_matvec

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(native.NativeKernel, "int8_matvec", counted)
    one = layer(x[:1])
    assert len(calls) == 1
    assert torch.allclose(one.float(), torch_one.float(), atol=1e-2 * torch_one.abs().max().item())
    layer(x)  # a prefill chunk: torch's GEMM
    assert len(calls) == 1
    layer.use_native(None)
    assert torch.equal(layer(x[:1]), torch_one)


def _decode_logits(
    folder: Path, kernel_name: str, monkeypatch, quant: str = "int8"
) -> tuple[torch.Tensor, dict]:
    """Logits of 24 one-token decode steps (the path the kernel serves)."""
    from engine.loading.loader import load_model

    monkeypatch.setenv("LOOPCHAT_KERNEL", kernel_name)
    loaded = load_model(folder, dtype="bfloat16", device="cpu", quant=quant, max_context=64)
    ids = [1] + [3 + (i * 37) % 400 for i in range(23)]
    with torch.inference_mode():
        steps = [loaded.model(torch.tensor([t]), i).float()[-1] for i, t in enumerate(ids)]
    return torch.stack(steps), loaded.describe()


@pytest.mark.parametrize("quant", ["int8", pytest.param("int4", marks=TORCH_INT4_LAYOUT)])
def test_model_decodes_like_torchs_kernel(kernel, tiny_model_dir: Path, monkeypatch, quant) -> None:
    monkeypatch.setenv("LOOPCHAT_HOME", str(tiny_model_dir.parent / "native-home"))
    mine, info = _decode_logits(tiny_model_dir, f"{quant}native", monkeypatch, quant)
    theirs, other = _decode_logits(tiny_model_dir, f"{quant}pack", monkeypatch, quant)
    assert info["kernel"] == f"{quant}native" and info["native_isa"] == kernel.isa
    assert other["kernel"] == f"{quant}pack" and "native_isa" not in other
    # Both compute the same int8 weights with bfloat16 activations; they differ by rounding only.
    assert (mine - theirs).abs().max() <= 0.02 * theirs.abs().max()
    assert (mine.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9


@TORCH_INT4_LAYOUT
def test_int4_prefill_chunk_computes_like_torchs_kernel(kernel, tiny_model_dir: Path, monkeypatch):
    from engine.kernels.quant import Int4Linear
    from engine.loading.loader import load_model

    monkeypatch.setenv("LOOPCHAT_HOME", str(tiny_model_dir.parent / "native-home"))
    ids = torch.tensor([1] + [3 + (i * 41) % 500 for i in range(INT4_GEMM_ROWS + 15)])
    logits = {}
    for name in ("int4native", "int4pack"):
        monkeypatch.setenv("LOOPCHAT_KERNEL", name)
        loaded = load_model(tiny_model_dir, dtype="bfloat16", device="cpu", quant="int4")
        layers = [m for m in loaded.model.modules() if isinstance(m, Int4Linear)]
        assert any(m.native is kernel for m in layers) == (name == "int4native")
        with torch.inference_mode():
            logits[name] = loaded.model(ids, 0).float()  # one chunk of 80 rows
    mine, theirs = logits["int4native"], logits["int4pack"]
    assert (mine - theirs).abs().max() <= 0.03 * theirs.abs().max()
    assert (mine.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9


def test_decode_loop_hands_its_cores_to_the_kernel_and_back(kernel) -> None:
    before = torch.get_num_threads()
    governor = ThreadGovernor([1, 2], start=2)
    try:
        torch.set_num_threads(2)
        with decoding(kernel, governor):
            assert torch.get_num_threads() == 1 and kernel.threads == 2
            governor._set(1)  # what the governor does when another process takes a core
            assert kernel.threads == 1 and torch.get_num_threads() == 1
        # the next prefill's GEMMs run on torch with the count the governor settled on
        assert torch.get_num_threads() == 1 and kernel.threads == 0 and governor.setter is None
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError), decoding(kernel, None):
            raise RuntimeError("a failed step")
        assert torch.get_num_threads() == 2 and kernel.threads == 0
    finally:
        torch.set_num_threads(before)


def test_a_generator_decodes_with_torch_on_one_thread(kernel, tiny_model_dir, monkeypatch):
    from engine.events import SamplingParams
    from engine.generation.generate import Generator
    from engine.loading.loader import load_model

    monkeypatch.setenv("LOOPCHAT_KERNEL", "int8native")
    loaded = load_model(tiny_model_dir, dtype="bfloat16", device="cpu", quant="int8")
    generator = Generator(loaded)
    assert generator._native is not None
    seen: list[int] = []
    params = SamplingParams(temperature=0.0)
    for _step in generator.generate([1, 5, 9], params, max_new_tokens=6):
        seen.append(torch.get_num_threads())
    assert seen and set(seen) == {1}
    # afterwards torch has the cores back, as many as the governor settled on, for the prefill
    assert generator._governor is not None
    assert torch.get_num_threads() == generator._governor.current


@pytest.mark.skipif(not (BUILT and X86_64), reason="installed without a C compiler")
def test_the_install_built_every_level_and_the_best_this_cpu_runs_loads(fresh_load) -> None:
    # CI installs with a compiler: a build that stops compiling must fail here, not fall back.
    for variant in native_variants.X86_VARIANTS:
        assert (native.LIBRARY_DIR / native_variants.library_filename(variant.name)).is_file()
        assert (native.LIBRARY_DIR / native_variants.digest_filename(variant.name)).is_file()
    runnable = native.runnable_variants()
    assert runnable[-1] == "baseline" and set(runnable) <= {"avx512", "avx2", "baseline"}
    built = native.load()
    assert built is not None, native.unavailable_reason()
    assert built.isa == native.load_variant(runnable[0]).isa  # the CPU's best


@pytest.mark.skipif(not (BUILT and X86_64), reason="installed without a C compiler")
@pytest.mark.parametrize("variant", [v.name for v in native_variants.X86_VARIANTS])
def test_each_level_this_cpu_runs_computes_the_same(variant: str) -> None:
    if variant not in native.runnable_variants():
        pytest.skip(f"this CPU cannot execute the {variant} build")
    kernel = native.load_variant(variant)  # self-checked: int8, int4, norms, rotary
    assert (
        kernel.isa == {"avx512": "avx512-vnni-vbmi", "avx2": "avx2", "baseline": "scalar"}[variant]
    )
    q, scale, x = _case(70, 1040)
    want = F.linear(x.double(), dequantize_int8(q, scale).double())
    got = kernel.int8_matvec(x, q, scale, 2).double()
    assert ((got - want).abs().max() / want.abs().max()).item() <= 2e-4
    q4, sz = quantize_int4(torch.randn(128, 256) * 0.05, 64)
    want4 = F.linear(x[:, :256].double(), dequantize_int4(q4, sz, 64).double())
    got4 = kernel.int4_matvec(x[:, :256], native.pack_int4_blocks64(q4), sz, 64, 2).double()
    assert ((got4 - want4).abs().max() / want4.abs().max()).item() <= 2e-4


@pytest.mark.skipif(not BUILT, reason="installed without a C compiler")
def test_no_compiler_is_run_and_no_code_loaded_from_outside_the_package(
    fresh_load, monkeypatch, tmp_path, tiny_model_dir: Path
) -> None:
    # The kernels come with the install: with no compiler on PATH (a frozen app on a bare system)
    # or a hanging one, they still load, and the only libraries opened are the package's own,
    # whatever lies in the user's (possibly shared, possibly planted) cache folder.
    hanging = tmp_path / "cc"
    hanging.write_text("#!/bin/sh\nsleep 600\n")
    hanging.chmod(0o755)
    monkeypatch.setenv("CC", str(hanging))
    monkeypatch.setenv("PATH", str(tmp_path))
    planted = tmp_path / "home" / "cache" / "native"
    planted.mkdir(parents=True)
    for name in ("decode_kernels-0123456789abcdef.so", native_variants.library_filename("avx2")):
        (planted / name).write_bytes(b"\x7fELF not ours")
    spawned: list[str] = []
    opened: list[str] = []

    def watch(event: str, args: tuple) -> None:
        if not watching:
            return
        if event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec"):
            spawned.append(str(args[:2]))
        elif event == "ctypes.dlopen" and args[0] is not None:  # None: the process itself
            opened.append(str(args[0]))

    watching = True
    sys.addaudithook(watch)
    try:
        from engine.loading.loader import load_model

        started = time.monotonic()
        built = native.load()
        loaded = load_model(tiny_model_dir, dtype="bfloat16", device="cpu", quant="int8")
    finally:
        watching = False
    assert built is not None, native.unavailable_reason()
    assert time.monotonic() - started < 120  # the hanging compiler was never waited for
    assert spawned == []
    assert opened and all(Path(p).parent == native.LIBRARY_DIR for p in opened), opened
    assert loaded.describe().get("native_ops") is True


def test_an_unusable_cache_folder_does_not_stop_a_model_loading(fresh_load, tmp_path) -> None:
    # The cache folder left owned by root after one `sudo` run (here: a file where it should be)
    # once made every model load fail, the built-in one included; the kernels need no cache now.
    from engine.loading.loader import load_model

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "cache").write_text("not a folder")
    loaded = load_model("builtin", dtype="bfloat16", device="cpu")
    assert loaded.describe()["kernel"]
    if BUILT:
        assert loaded.describe().get("native_ops") is True


def test_a_missing_build_means_torchs_kernels_and_a_reason(fresh_load, monkeypatch, tmp_path):
    monkeypatch.setattr(native, "LIBRARY_DIR", tmp_path / "empty")
    assert native.load() is None
    assert "not built when Loopchat was installed" in (native.unavailable_reason() or "")
    assert available_kernels("int8") == ("int8pack",)
    assert available_kernels("int4") == ("int4pack",)


@pytest.mark.skipif(not (BUILT and X86_64), reason="installed without a C compiler")
def test_a_damaged_build_is_refused_before_it_is_mapped(tmp_path) -> None:
    # A truncated library passed to dlopen crashes the process (SIGBUS); its digest stops it.
    # Run in a child process, so that a regression fails this test instead of killing the run.
    folder = _copy_of_builds(tmp_path / "libs")
    best = native.runnable_variants(folder)[0]
    library = folder / native_variants.library_filename(best)
    library.write_bytes(library.read_bytes()[:4096])
    check = f"""
import pytest
from pathlib import Path
from engine.kernels import native
native.LIBRARY_DIR = Path({str(folder)!r})
with pytest.raises(native.Unavailable, match="damaged"):
    native.load_variant({best!r})
fallback = native.load()  # the next build down runs instead
assert fallback is not None and fallback.path.name != {library.name!r}
(native.LIBRARY_DIR / {native_variants.digest_filename("baseline")!r}).write_text("0" * 64)
native.load.cache_clear()
assert native.load() is None  # without a trusted baseline, nothing is loaded
assert "damaged" in (native.unavailable_reason() or "")
"""
    env = {k: v for k, v in os.environ.items() if k != "LOOPCHAT_NATIVE"}
    env["LOOPCHAT_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_turned_off_by_environment(fresh_load, monkeypatch) -> None:
    monkeypatch.setenv("LOOPCHAT_NATIVE", "0")
    assert native.load() is None
    assert "LOOPCHAT_NATIVE=0" in (native.unavailable_reason() or "")
    assert "int8native" not in available_kernels("int8")
    assert "int4native" not in available_kernels("int4")


@pytest.mark.skipif(not (BUILT and X86_64), reason="installed without a C compiler")
def test_the_environment_picks_a_lower_build_but_never_one_the_cpu_cannot_run(
    fresh_load, monkeypatch
) -> None:
    monkeypatch.setenv("LOOPCHAT_NATIVE", "baseline")
    built = native.load()
    assert built is not None and built.isa == "scalar"
    if "avx512" not in native.runnable_variants():
        monkeypatch.setenv("LOOPCHAT_NATIVE", "avx512")
        native.load.cache_clear()
        assert native.load() is None
        assert "cannot run the avx512 build" in (native.unavailable_reason() or "")


def test_torchs_int4_layout_is_detected_not_assumed() -> None:
    # int4native is offered exactly where torch packs int4 weights the way the kernel reads them.
    q = torch.randint(0, 16, (192, 128), dtype=torch.int32)
    same = torch.equal(pack_int4(q, torch.device("cpu")), native.pack_int4_blocks64(q))
    assert native.torch_int4_layout_fits() == same
    if native.load() is not None:
        assert ("int4native" in available_kernels("int4")) == same


def test_the_builds_ship_with_the_package_and_the_executable() -> None:
    # pip builds them through setup.py (native_build.py); build.spec builds them for the bundle.
    root = Path(__file__).resolve().parents[1]
    setup = (root / "setup.py").read_text(encoding="utf-8")
    assert "native_build.build_variant" in setup and "optional=True" in setup
    spec = (root / "build.spec").read_text(encoding="utf-8")
    assert "native_build.build_all" in spec and "LIBRARY_FOLDER" in spec
    assert not hasattr(native, "compiler")  # nothing compiles at run time


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_computes_on_threads_of_its_own(kernel) -> None:
    # The parent's helper threads do not exist in a child; the child must neither hang waiting for
    # them nor get a wrong result.
    q, scale, x = _case(700, 512)
    want = kernel.int8_matvec(x, q, scale, 2)  # the parent's pool is running now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = all(torch.equal(kernel.int8_matvec(x, q, scale, 2), want) for _ in range(20))
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0


@pytest.mark.skipif(not (native_build.compiler() and X86_64), reason="needs cc on x86-64")
@pytest.mark.parametrize(
    ("arch", "isa", "level"),
    [
        ("-march=x86-64", "scalar", 0),
        ("-march=haswell", "avx2", 1),
        ("-march=skylake-avx512", "avx512bw", 2),
        ("-march=cascadelake", "avx512-vnni", 2),
    ],
)
def test_other_cpus_code_paths_compute_the_same(tmp_path: Path, arch: str, isa: str, level: int):
    # The C file keeps paths for CPUs between the shipped levels (AVX-512 without VNNI or VBMI);
    # built here with a test's own flags, each must pass the same check where this CPU runs it.
    if native.cpu_level() < level:
        pytest.skip(f"this CPU cannot execute {arch}")
    library = tmp_path / f"decode_kernels{arch}.so"
    assert native_build.build_variant("test", library, flags=(arch,)) is None
    import ctypes

    kernel = native.NativeKernel(ctypes.CDLL(str(library)), library)
    assert kernel.isa == isa
    assert native._self_check(kernel) is None
    q, scale, x = _case(70, 1040)
    want = F.linear(x.double(), dequantize_int8(q, scale).double())
    got = kernel.int8_matvec(x, q, scale, 2).double()
    assert ((got - want).abs().max() / want.abs().max()).item() <= 2e-4
