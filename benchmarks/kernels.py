"""Batch-1 matvec speed of each weight kernel on TinyLlama shapes, and the decode ceiling it sets.

Decode streams each weight once per token, so a format's decode speed cannot beat the sum of its
matvec times. This times each kernel on the model's real matrix shapes (cold: the weights cycle
through 200 MB of copies, past any cache), interleaved round-robin and best-of-N so background load
hits all alike, and prints GB/s of weight bytes per shape plus the whole-model tokens/s that the
matvecs alone allow, and each quantized format's ceiling as a ratio to the best 16-bit one.

    python benchmarks/kernels.py [--threads 1 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.kernels.tuning import _make_matvec, cpu_model  # noqa: E402

DIM, HIDDEN, HEADS, KV_HEADS, LAYERS, VOCAB = 2048, 5632, 32, 4, 22, 32000
HEAD_DIM = DIM // HEADS
SHAPES: dict[str, tuple[int, int, int]] = {
    # name: (out, in, matrices per token)
    "wq, wo": (DIM, DIM, 2 * LAYERS),
    "wk, wv": (KV_HEADS * HEAD_DIM, DIM, 2 * LAYERS),
    "w1, w3": (HIDDEN, DIM, 2 * LAYERS),
    "w2": (DIM, HIDDEN, LAYERS),
    "output head": (VOCAB, DIM, 1),
}
KERNELS: dict[str, tuple[str, torch.dtype, float]] = {
    # label: (engine kernel, activation dtype, bytes per weight)
    "bf16 plain": ("plain", torch.bfloat16, 2.0),
    "bf16 packed": ("packed", torch.bfloat16, 2.0),
    "fp16 plain": ("plain", torch.float16, 2.0),
    "int8pack (bf16 act.)": ("int8pack", torch.bfloat16, 1.0),
    "int8native (bf16 act.)": ("int8native", torch.bfloat16, 1.0),
    "int4pack g64 (bf16 act.)": ("int4pack", torch.bfloat16, 0.5),
    "int4native g64 (bf16 act.)": ("int4native", torch.bfloat16, 0.5),
    "int_mm W8A8 (int8 act.; not used)": ("int_mm", torch.int8, 1.0),
}
HEAD_INT8 = "int8pack (bf16 act.)"
"""The quantized formats keep the output head in int8 (engine/kernels/quant.py): int4 on torch's
kernel,
int8 on the kernel of its own row."""
WORKING_SET = 200 * 2**20


def _int_mm(out_f: int, in_f: int, copies: int) -> Callable[[], None]:
    """int8 weights times an int8 activation row (what llama.cpp's Q8_0 does): the weight-only
    contract keeps activations in 16 bits, so this is only a reference for what VNNI could do."""
    weights = [torch.zeros(out_f, in_f, dtype=torch.int8) for _ in range(copies)]
    x = torch.ones(1, in_f, dtype=torch.int8)

    def run() -> None:
        for w in weights:
            torch._int_mm(x, w.t())

    return run


def build(label: str, out_f: int, in_f: int) -> tuple[Callable[[], None] | None, int]:
    kernel, dtype, per = KERNELS[label]
    copies = max(2, int(WORKING_SET // (out_f * in_f * per)))
    if kernel == "int_mm":
        return _int_mm(out_f, in_f, copies), copies
    with torch.inference_mode():
        return _make_matvec(kernel, out_f, in_f, dtype, copies), copies


def measure(threads: int, rounds: int) -> dict[tuple[str, str], float]:
    """Seconds per matvec, best of `rounds` interleaved passes."""
    torch.set_num_threads(threads)
    runs = {}
    for label in KERNELS:
        for shape, (out_f, in_f, _) in SHAPES.items():
            run, copies = build(label, out_f, in_f)
            if run is not None:
                runs[(label, shape)] = (run, copies)
    best: dict[tuple[str, str], float] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for key, (run, copies) in runs.items():
                run()
                start = time.perf_counter()
                run()
                per = (time.perf_counter() - start) / copies
                best[key] = min(best.get(key, per), per)
    return best


def report(threads: int, best: dict[tuple[str, str], float]) -> None:
    print(f"\n**{threads} thread(s)** — GB/s of weight bytes per batch-1 matvec (best of N):\n")
    print("| kernel | " + " | ".join(SHAPES) + " | matvec-only ceiling tok/s |")
    print("|---|" + "---|" * (len(SHAPES) + 1))
    ceiling: dict[str, float] = {}
    for label, (_, _, per) in KERNELS.items():
        if not all((label, s) in best for s in SHAPES):
            continue
        cells = []
        total = 0.0
        for shape, (out_f, in_f, count) in SHAPES.items():
            seconds = best[(label, shape)]
            cells.append(f"{out_f * in_f * per / seconds / 1e9:.1f}")
            head = per < 1 and shape == "output head"
            total += count * (best[(HEAD_INT8, shape)] if head else seconds)
        ceiling[label] = 1.0 / total
        print(f"| {label} | " + " | ".join(cells) + f" | {ceiling[label]:.1f} |")
    sixteen = {k: v for k, v in ceiling.items() if KERNELS[k][2] == 2.0}
    if sixteen:
        name, top = max(sixteen.items(), key=lambda kv: kv[1])
        for label, value in ceiling.items():
            if KERNELS[label][2] < 2:
                print(
                    f"\n{label} / best 16-bit ({name}): {value / top:.2f}x (matvecs alone)", end=""
                )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for threads in args.threads:
        report(threads, measure(threads, args.rounds))
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"\nCPU: {cpu_model()}, torch {torch.__version__}, load average {' '.join(load)}")


if __name__ == "__main__":
    main()
