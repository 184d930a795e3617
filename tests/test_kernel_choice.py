"""The measured kernel/thread choice is cached per machine and honoured; overrides win; the decode
thread governor follows the step times it is shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.kernels import tuning
from engine.kernels.threads import ThreadGovernor
from engine.kernels.tuning import pick


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOOPCHAT_KERNEL", raising=False)
    monkeypatch.delenv("LOOPCHAT_THREADS", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(folder: Path, quant: str = "none"):
    from engine.loading.loader import load_model

    return load_model(folder, dtype="bfloat16", device="cpu", quant=quant)


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured again although a choice was cached")


def test_choice_is_measured_once_then_cached(tiny_model_dir: Path, monkeypatch, tmp_path: Path):
    first = _load(tiny_model_dir).describe()
    assert first["kernel_source"] == "measured"
    assert first["kernel"] in ("packed", "plain") and first["threads"] >= 1
    saved = json.loads((tmp_path / "home" / "cache" / "kernel_choice.json").read_text())
    (entry,) = saved.values()
    assert entry["kernel"] == first["kernel"] and entry["timings_ms"]

    monkeypatch.setattr(tuning, "measure", _no_measuring)
    second = _load(tiny_model_dir).describe()
    assert second["kernel_source"] == "cached"
    assert (second["kernel"], second["threads"]) == (first["kernel"], first["threads"])
    # each weight format has its own entry
    monkeypatch.undo()
    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    # the int8 kernel is measured too (torch's or the compiled one, whichever is faster here)
    assert _load(tiny_model_dir, "int8").describe()["kernel"] in tuning.available_kernels("int8")
    assert len(json.loads((tmp_path / "home" / "cache" / "kernel_choice.json").read_text())) == 2


def test_cached_choice_is_honoured(tiny_model_dir: Path, monkeypatch, tmp_path: Path) -> None:
    key = tuning.tuning_key(torch.bfloat16, torch.device("cpu"), "none")
    path = tmp_path / "home" / "cache" / "kernel_choice.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({key: {"kernel": "plain", "threads": 1}}))
    monkeypatch.setattr(tuning, "measure", _no_measuring)
    loaded = _load(tiny_model_dir)
    info = loaded.describe()
    assert (info["kernel"], info["threads"], info["kernel_source"]) == ("plain", 1, "cached")
    assert torch.get_num_threads() == 1
    assert not loaded.model.layers[0].feed_forward.w1.weight.is_mkldnn


def test_unreadable_or_foreign_choice_is_measured_again(tiny_model_dir: Path, tmp_path: Path):
    path = tmp_path / "home" / "cache" / "kernel_choice.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert _load(tiny_model_dir).describe()["kernel_source"] == "measured"
    key = tuning.tuning_key(torch.bfloat16, torch.device("cpu"), "none")
    path.write_text(json.dumps({key: {"kernel": "int4pack", "threads": 1}}))  # not a bf16 kernel
    assert _load(tiny_model_dir).describe()["kernel_source"] == "measured"


@pytest.mark.parametrize("kernel", ["plain", "packed"])
def test_loopchat_kernel_forces_the_kernel(tiny_model_dir: Path, monkeypatch, kernel: str):
    from engine.kernels.linear import can_pack

    if kernel == "packed" and not can_pack(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bf16 on this machine")
    monkeypatch.setenv("LOOPCHAT_KERNEL", kernel)
    loaded = _load(tiny_model_dir)
    info = loaded.describe()
    assert info["kernel"] == kernel and info["kernel_source"] == "LOOPCHAT_KERNEL"
    assert loaded.model.layers[0].feed_forward.w1.weight.is_mkldnn == (kernel == "packed")


def test_loopchat_kernel_that_does_not_apply_is_ignored(tiny_model_dir: Path, monkeypatch):
    monkeypatch.setenv("LOOPCHAT_KERNEL", "int4pack")
    info = _load(tiny_model_dir).describe()
    assert info["kernel"] in ("packed", "plain") and info["kernel_source"] != "LOOPCHAT_KERNEL"


def test_loopchat_threads_forces_threads_and_turns_the_governor_off(
    tiny_model_dir: Path, monkeypatch
) -> None:
    from engine.generation.generate import Generator

    monkeypatch.setenv("LOOPCHAT_THREADS", "1")
    loaded = _load(tiny_model_dir)
    info = loaded.describe()
    assert info["threads"] == 1 and info["threads_source"] == "LOOPCHAT_THREADS"
    assert torch.get_num_threads() == 1
    assert info["thread_governor"] is False
    assert Generator(loaded)._governor is None


def test_pick_prefers_fewer_threads_unless_more_are_clearly_faster() -> None:
    near_tie = {("packed", 1): 1.00, ("packed", 2): 0.95, ("plain", 1): 1.5, ("plain", 2): 1.2}
    assert pick(near_tie, ("packed", "plain")) == ("packed", 1)
    clear = {("packed", 1): 1.00, ("packed", 2): 0.6, ("plain", 1): 0.9, ("plain", 2): 0.8}
    assert pick(clear, ("packed", "plain")) == ("packed", 2)


def test_governor_leaves_a_thread_count_that_slowed_down_and_probes_back() -> None:
    governor = ThreadGovernor([1, 2], start=2, probe_every=16, probe_steps=3)
    speed = {2: 0.010, 1: 0.016}  # quiet: two threads are faster

    def run(steps: int) -> list[int]:
        seen = []
        for _ in range(steps):
            seen.append(governor.current)
            governor.observe(speed[governor.current])
        return seen

    quiet = run(40)
    # It probed one thread (early, at step 4, then every 16 steps) and came back each time.
    assert quiet.count(1) == 3 * governor.probe_steps and quiet[-1] == 2
    assert torch.get_num_threads() == governor.current
    speed[2] = 0.045  # another process took a core: two threads stall at every barrier
    busy = run(40)
    assert busy[-20:].count(1) >= 17  # moved to one thread within a few steps
    speed[2] = 0.010  # the other process ended
    after = run(40)
    assert after[-10:].count(2) >= 6  # a probe found two threads fast again


def test_governor_finds_one_thread_early_when_the_machine_is_busy_from_the_start() -> None:
    governor = ThreadGovernor([1, 2], start=2, probe_every=32, probe_steps=3, first_probe=4)
    speed = {2: 0.045, 1: 0.016}  # busy before the first token: two threads have collapsed
    seen = []
    for _ in range(32):
        seen.append(governor.current)
        governor.observe(speed[governor.current])
    assert seen[:4] == [2, 2, 2, 2]
    assert seen[6:].count(1) == len(seen) - 6  # on one thread from the first probe on


def test_float16_prefill_rows_run_in_float32_where_half_gemms_are_slow(monkeypatch) -> None:
    from engine.kernels import linear

    calls = []
    real = linear.half_via_float

    def spy(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return real(x, weight)

    monkeypatch.setattr(linear, "half_via_float", spy)
    monkeypatch.setattr(linear, "slow_half_gemm", lambda: True)
    monkeypatch.setattr(linear, "HALF_CAST_ROWS", 40)  # several weight slices
    g = torch.Generator().manual_seed(0)
    layer = linear.Linear(48, 100)
    layer.weight = torch.nn.Parameter(torch.randn(100, 48, generator=g).half(), requires_grad=False)
    rows = torch.randn(linear.HALF_GEMM_ROWS, 48, generator=g).half()
    with torch.inference_mode():
        got = layer(rows)
        one = layer(rows[:1])
    assert calls == [linear.HALF_GEMM_ROWS]  # the decode row keeps float16's own matvec
    assert got.dtype == torch.float16 and got.shape == (linear.HALF_GEMM_ROWS, 100)
    # exactly the float32 product of the same float16 numbers, rounded once to float16
    assert torch.equal(got, torch.nn.functional.linear(rows.float(), layer.weight.float()).half())
    assert torch.allclose(one.float(), got[:1].float(), rtol=1e-2, atol=1e-2)
