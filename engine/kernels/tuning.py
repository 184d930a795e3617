"""Measured kernel and thread choice at load time, cached per machine.

Which matrix-vector kernel is fastest depends on the CPU, not on the code: on an AMD EPYC the
oneDNN-packed bf16 weights stream ~26 GB/s against ~18 for plain `F.linear`, while on an Intel
Xeon with AMX packing makes decode slower (../shared/PERF.md). So on the first load per (device,
dtype, weight format, CPU model, torch version) the candidates are timed on the model's real MLP
shapes at each thread count, for a fraction of a second, and the fastest is kept in a small JSON
file in the engine's cache folder; later loads read it and measure nothing.

What happens to threads after the load, while decoding (the thread governor, LOOPCHAT_THREADS),
is engine/kernels/threads.py's.

LOOPCHAT_KERNEL forces a kernel (e.g. "plain"); LOOPCHAT_THREADS (parsed by
engine.kernels.threads.forced_threads) a thread count.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.linear import can_pack, pack_weight
from engine.kernels.threads import forced_threads, physical_cores
from engine.model.config import ModelArgs
from engine.paths import cache_dir

log = logging.getLogger(__name__)

TUNING_VERSION = 1
KERNELS: dict[str, tuple[str, ...]] = {
    "none": ("packed", "plain"),
    "int8": ("int8pack", "int8native"),
    "int4": ("int4pack", "int4native"),
}
"""Candidate matvec paths per weight format. "int8native" and "int4native" are Loopchat's compiled
kernels (engine/kernels/native.py), candidates only where they could be built."""
NATIVE_KERNELS = ("int8native", "int4native")
QUANT_KERNELS = ("int8pack", "int4pack", *NATIVE_KERNELS)
BUDGET_S = 0.25
"""Wall time the timing loop may take (setup aside)."""
WORKING_SET_BYTES = 48 * 2**20
MAX_MEASURED_BYTES = 512 * 2**20
"""Largest weight timed (one copy): a 70B model's MLP is 470 MB in 16-bit."""
MAX_MEASURED_COLS = 65536
"""Weights cycled through per timed sample: past a 32 MB L3 cache, as a real decode step is, yet
only ~2 ms of streaming, so a busy machine cannot stretch the whole measurement far."""
THREAD_MARGIN = 0.08
"""Fewer threads win unless more are at least this much faster: fewer threads suffer less when
another process takes a core, so near-ties go to them."""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tuning_key(dtype: torch.dtype, device: torch.device, quant: str) -> str:
    """What a measured choice is valid for."""
    return json.dumps(
        {
            "v": TUNING_VERSION,
            "device": device.type,
            "dtype": str(dtype).removeprefix("torch."),
            "quant": quant,
            "cpu": cpu_model(),
            "cores": physical_cores(),
            "torch": torch.__version__,
            # the candidates: a kernel that becomes available (a reinstall with a compiler) or goes
            # away makes the old choice stale
            "kernels": list(available_kernels(quant)) if device.type == "cpu" else [],
            "native": _native_isa() if device.type == "cpu" and quant != "none" else None,
        },
        sort_keys=True,
    )


def _native_isa() -> str | None:
    """The compiled build in use: another build (a reinstall, LOOPCHAT_NATIVE=avx2) re-measures."""
    from engine.kernels.native import load

    kernel = load()
    return kernel.isa if kernel is not None else None


def _choices_file() -> Path:
    return cache_dir() / "kernel_choice.json"


def _read_choices() -> dict[str, Any]:
    try:
        data = json.loads(_choices_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_choice(key: str, choice: dict[str, Any]) -> None:
    """Merge one choice into the JSON file (written aside, then renamed: never half a file)."""
    try:
        path = _choices_file()
        data = _read_choices()
        data[key] = choice
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save the kernel choice: %s", exc)


# ----------------------------------------------------------------------------------------------
# Timing candidates


def _make_matvec(
    kernel: str, out_f: int, in_f: int, dtype: torch.dtype, copies: int
) -> Callable[[], None] | None:
    """A closure running one batch-1 product per weight copy, or None if the kernel can't run."""
    x = torch.ones(1, in_f, dtype=dtype)
    if kernel in ("packed", "plain"):
        weights = [torch.zeros(out_f, in_f, dtype=dtype) for _ in range(copies)]
        if kernel == "packed":
            if not can_pack(dtype):
                return None
            weights = [pack_weight(w) for w in weights]

            def run() -> None:
                for w in weights:
                    torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")

            return run

        def run_plain() -> None:
            for w in weights:
                F.linear(x, w)

        return run_plain
    if kernel in QUANT_KERNELS:
        layers = _quantized_layers(kernel, out_f, in_f, dtype, copies)
        if layers is None:
            return None

        def run_layers() -> None:
            for layer in layers:
                layer(x)

        return run_layers
    return None


def _quantized_layers(
    kernel: str, out_f: int, in_f: int, dtype: torch.dtype, copies: int
) -> list[nn.Module] | None:
    """`copies` real int8/int4 layers (zero weights) on `kernel`: the path decode takes."""
    from engine.kernels.native import load
    from engine.kernels.quant import (
        DEFAULT_GROUP_SIZE,
        Int4Linear,
        Int8Linear,
        int4_fits,
        int8_fits,
    )
    from engine.kernels.quant_math import pack_int4

    layers: list[Int8Linear | Int4Linear] = []
    if kernel.startswith("int8"):
        if not int8_fits((out_f, in_f)):
            return None
        for _ in range(copies):
            layer8 = Int8Linear(in_f, out_f, dtype)
            layer8.weight.zero_()
            layer8.scales.fill_(1.0)
            layers.append(layer8)
    else:
        if not int4_fits((out_f, in_f), DEFAULT_GROUP_SIZE):
            return None
        packed = pack_int4(torch.zeros(out_f, in_f, dtype=torch.int32), torch.device("cpu"))
        for _ in range(copies):
            layer4 = Int4Linear(in_f, out_f, dtype, DEFAULT_GROUP_SIZE)
            layer4.weight.copy_(packed)
            layer4.scales_zeros.fill_(1.0)
            layers.append(layer4)
    if kernel in NATIVE_KERNELS:
        native = load()
        for layer in layers:
            layer.use_native(native)
        if any(layer.native is None for layer in layers):
            return None  # not built here, or a shape it does not take
    return list(layers)


def measure(
    args: ModelArgs, dtype: torch.dtype, quant: str, kernels: tuple[str, ...], threads: list[int]
) -> dict[tuple[str, int], float]:
    """Seconds per MLP-shaped matvec pass for each (kernel, threads), interleaved, medians."""
    bytes_per = {"int8pack": 1.0, "int8native": 1.0, "int4pack": 0.5, "int4native": 0.5}
    runs: dict[tuple[str, int], Callable[[], None]] = {}
    # The config is not yet checked against the weights here: a bogus size must not allocate
    # gigabytes. Real MLPs (70B: 28672 x 8192) fit; larger ones are timed on fewer rows.
    if not 0 < args.dim <= MAX_MEASURED_COLS or args.hidden_dim <= 0:
        return {}
    rows = min(args.hidden_dim, max(64, MAX_MEASURED_BYTES // (args.dim * dtype.itemsize)))
    for kernel in kernels:
        weight_bytes = rows * args.dim * bytes_per.get(kernel, dtype.itemsize)
        # At least two copies (a product never finds its weight cached), at most 16 (tiny models
        # would otherwise time Python's call overhead a thousand times over).
        copies = min(16, max(2, int(WORKING_SET_BYTES // max(1.0, weight_bytes))))
        try:
            with torch.inference_mode():
                run = _make_matvec(kernel, rows, args.dim, dtype, copies)
                if run is not None:
                    run()  # warm-up (and a check that the kernel runs here at all)
        except RuntimeError as exc:
            log.info("kernel %s cannot run here: %s", kernel, exc)
            run = None
        if run is not None:
            for n in threads:
                runs[(kernel, n)] = run
    if not runs:
        return {}
    times: dict[tuple[str, int], list[float]] = {k: [] for k in runs}
    previous = torch.get_num_threads()
    deadline = time.perf_counter() + BUDGET_S
    try:
        with torch.inference_mode():
            # Round-robin over the candidates, so a burst of background load hits them alike;
            # at least one full round, then until the budget or 25 rounds.
            for rounds in range(25):
                for (kernel, n), run in runs.items():
                    if times[(kernel, n)] and times[(kernel, n)][-1] > BUDGET_S / 4:
                        continue  # hopeless (e.g. a thread waiting for a busy core): no more
                    torch.set_num_threads(n)
                    run()  # the first product after a thread-count change warms the team up
                    start = time.perf_counter()
                    run()
                    times[(kernel, n)].append(time.perf_counter() - start)
                if rounds >= 1 and time.perf_counter() > deadline:
                    break
    finally:
        torch.set_num_threads(previous)
    # The median, not the minimum: it includes what background load does to each thread count.
    return {k: statistics.median(v) for k, v in times.items()}


def available_kernels(quant: str) -> tuple[str, ...]:
    """The candidates for this weight format that can run in this process."""
    kernels = KERNELS[quant]
    if any(k in NATIVE_KERNELS for k in kernels):
        from engine.kernels.native import load, torch_int4_layout_fits

        if load() is None:
            kernels = tuple(k for k in kernels if k not in NATIVE_KERNELS)
        elif not torch_int4_layout_fits():  # torch packs int4 in 32-row blocks on this CPU
            kernels = tuple(k for k in kernels if k != "int4native")
    return kernels


def pick(timings: dict[tuple[str, int], float], kernels: tuple[str, ...]) -> tuple[str, int]:
    """The fastest kernel (normalised per byte is unnecessary: one format's kernels stream the same
    weights), then the fewest threads within THREAD_MARGIN of that kernel's best time."""
    best_kernel = min(timings, key=timings.get)[0]  # type: ignore[arg-type]
    mine = {n: t for (k, n), t in timings.items() if k == best_kernel}
    fastest = min(mine.values())
    threads = min(n for n, t in mine.items() if t <= fastest * (1 + THREAD_MARGIN))
    return best_kernel, threads


def choose_runtime(
    args: ModelArgs, dtype: torch.dtype, device: torch.device, quant: str
) -> dict[str, Any]:
    """Kernel and threads for this model on this machine: forced, cached, or measured now.

    Sets torch's thread count. Returns plain data for LoadedModel.describe().
    """
    if device.type != "cpu":
        return {"kernel": "default", "threads": None, "kernel_source": "device"}
    kernels = available_kernels(quant)
    cores = physical_cores()
    key = tuning_key(dtype, device, quant)
    choice: dict[str, Any] | None = _read_choices().get(key)
    source = "cached"
    if not (
        isinstance(choice, dict)
        and choice.get("kernel") in kernels
        and isinstance(choice.get("threads"), int)
        and 1 <= choice["threads"] <= cores
    ):
        started = time.perf_counter()
        timings = measure(args, dtype, quant, kernels, list(range(1, cores + 1)))
        if timings:
            kernel, threads = pick(timings, kernels)
        else:
            kernel, threads = kernels[-1], cores
        choice = {
            "kernel": kernel,
            "threads": threads,
            "timings_ms": {f"{k}@{n}": round(t * 1e3, 3) for (k, n), t in timings.items()},
            "measured_s": round(time.perf_counter() - started, 3),
        }
        _write_choice(key, choice)
        source = "measured"
        log.info(
            "kernel choice for %s/%s on %s: %s with %d threads (measured in %.2f s: %s)",
            str(dtype).removeprefix("torch."),
            quant,
            cpu_model(),
            kernel,
            threads,
            choice["measured_s"],
            choice["timings_ms"],
        )
    kernel, threads = choice["kernel"], choice["threads"]
    forced_kernel = os.environ.get("LOOPCHAT_KERNEL", "").strip()
    if forced_kernel:
        if forced_kernel in kernels:
            kernel, source = forced_kernel, "LOOPCHAT_KERNEL"
        else:
            log.warning(
                "LOOPCHAT_KERNEL=%s is not a kernel for %s weights (%s); ignored",
                forced_kernel,
                quant,
                ", ".join(kernels),
            )
    forced = forced_threads()
    if forced:
        threads = forced
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return {
        "kernel": kernel,
        "threads": threads,
        "threads_source": "LOOPCHAT_THREADS" if forced else source,
        "kernel_source": source,
        "cpu": cpu_model(),
        "thread_governor": not forced and cores > 1,
    }
