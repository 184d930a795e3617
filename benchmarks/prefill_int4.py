"""Prefill-chunk products of an int4 layer: torch's int4 kernel against the compiled kernel's
weight written out in bfloat16 plus a GEMM, with the bfloat16 GEMM alone as the yardstick.

Why: batch-1 decode streams weights, but a prefill chunk of T rows is a GEMM; torch's CPU int4
kernel (`_weight_int4pack_mm_for_cpu`) took ~2.3x as long as bf16 for 512 rows, which makes a
long pasted prompt twice as slow to start answering with 4-bit weights. This prints, per chunk
size, the time of one TinyLlama-shaped MLP product (5632 x 2048, group 64) each way and the
ratios, measured in the same run; `engine/kernels/quant.py`'s INT4_GEMM_ROWS comes from it.

    python benchmarks/prefill_int4.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.kernels import native
from engine.kernels.quant_math import dequantize_int4, pack_int4, quantize_int4
from engine.kernels.tuning import cpu_model

OUT, IN, GROUP = 5632, 2048, 64
ROWS = (2, 4, 8, 16, 32, 64, 128, 512)


def best_ms(run: Callable[[], object], rounds: int) -> float:
    run()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernel = native.load()
    if kernel is None:
        raise SystemExit(f"no compiled kernel here: {native.unavailable_reason()}")
    g = torch.Generator().manual_seed(0)
    q4, sz = quantize_int4(torch.randn(OUT, IN, generator=g) * 0.02, GROUP)
    sz = sz.bfloat16().contiguous()
    packed = pack_int4(q4, torch.device("cpu"))
    weight = dequantize_int4(q4, sz, GROUP).bfloat16().contiguous()

    def written_out() -> torch.Tensor:
        return kernel.int4_weights(packed, sz, GROUP, torch.bfloat16, args.threads)

    write_ms = best_ms(written_out, args.rounds)
    print(
        f"\nCPU: {cpu_model()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(f"writing the {OUT}x{IN} int4 weight out in bfloat16: {write_ms:.2f} ms\n")
    print("| rows | torch int4 ms | written out + GEMM ms | bf16 GEMM ms | torch / written out |")
    print("|---|---|---|---|---|")
    for rows in ROWS:
        x = torch.randn(rows, IN, generator=g).bfloat16()
        theirs = best_ms(
            lambda x=x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, sz),
            args.rounds,
        )
        mine = best_ms(lambda x=x: x @ written_out(), args.rounds)
        plain = best_ms(lambda x=x: F.linear(x, weight), args.rounds)
        print(f"| {rows} | {theirs:.2f} | {mine:.2f} | {plain:.2f} | {theirs / mine:.2f}x |")


if __name__ == "__main__":
    main()
