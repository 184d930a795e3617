"""Batch-1 matvec speed of the GGUF block kernels (Q4_0, Q8_0, Q4_K, Q6_K) on TinyLlama shapes,
beside torch's int4 kernel and Loopchat's own int8/int4 kernels, in one run.

Decode streams every weight once per token, so these products set the ceiling of a GGUF model's
decode. Weights are cold (each layer cycles through ~WORKING_SET bytes of copies, past any cache);
kernels are interleaved round-robin per shape, best of N, so background load hits all alike. Prints
G weights/s and GB/s of weight bytes per shape, the ratio of each to torch's int4 kernel, and the
whole-token ceiling of a Q4_0 / Q8_0 / Q4_K_M file's matvecs next to llama.cpp's measured decode
(../shared/PERF.md, AMD EPYC, 2 threads: Q4_0 54 tok/s, Q8_0 34 tok/s).

    python benchmarks/gguf_kernels.py [--threads 2] [--rounds 7] [--rows 1]

--rows M > 1 times M rows of x at once (a verify pass, a prefill chunk: each weight row is read
once for 8 rows of x), GGUF kernels only; G weights/s then counts weights x rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.kernels.gguf_linear import KERNEL_BLOCKS, GGUFLinear  # noqa: E402
from engine.kernels.native import load, torch_int4_layout_fits  # noqa: E402
from engine.kernels.quant import Int4Linear, Int8Linear  # noqa: E402
from engine.kernels.quant_math import pack_int4  # noqa: E402
from engine.kernels.tuning import cpu_model  # noqa: E402

DIM, HIDDEN, LAYERS, VOCAB, KV = 2048, 5632, 22, 32000, 256
SHAPES: dict[str, tuple[int, int]] = {
    "2048x2048 (q, o)": (DIM, DIM),
    "256x2048 (k, v)": (KV, DIM),
    "5632x2048 (gate, up)": (HIDDEN, DIM),
    "2048x5632 (down)": (DIM, HIDDEN),
    "32000x2048 (head)": (VOCAB, DIM),
}
GGUF = {"Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
BASELINE = "torch int4 g32"
LLAMA_CPP = {"Q4_0": 54.0, "Q8_0": 34.3}
"""llama.cpp's TinyLlama-shaped decode, tok/s at context 16 (../shared/PERF.md; AMD EPYC,
2 threads)."""
WORKING_SET = 160 * 2**20


def _copies(nbytes: int) -> int:
    return max(2, WORKING_SET // nbytes)


def _gguf_layers(qtype: int, out_f: int, in_f: int, kernel) -> tuple[list[torch.nn.Module], int]:
    weights, nbytes = KERNEL_BLOCKS[qtype]
    row = in_f // weights * nbytes
    layers = []
    for _ in range(_copies(out_f * row)):
        layer = GGUFLinear(in_f, out_f, qtype, torch.bfloat16)
        raw = torch.randint(0, 256, (out_f, in_f // weights, nbytes), dtype=torch.uint8)
        d = (torch.rand(out_f, in_f // weights, 2) * 1e-3).to(torch.float16).view(torch.uint8)
        at = 208 if qtype == 14 else 0  # float16 d (and Q4_K's dmin) where the layout keeps them
        raw[..., at : at + 4 if qtype == 12 else at + 2] = d.reshape(out_f, in_f // weights, -1)[
            ..., : 4 if qtype == 12 else 2
        ]
        layer.raw = raw.reshape(out_f, row).contiguous()
        layer.use_native(kernel)
        layers.append(layer)
    return layers, out_f * row


def _int4_layers(out_f: int, in_f: int, group: int, kernel) -> tuple[list[torch.nn.Module], int]:
    packed = pack_int4(torch.randint(0, 16, (out_f, in_f), dtype=torch.int32), torch.device("cpu"))
    nbytes = out_f * in_f // 2 + (in_f // group) * out_f * 2 * 2
    layers = []
    for _ in range(_copies(nbytes)):
        layer = Int4Linear(in_f, out_f, torch.bfloat16, group)
        layer.weight.copy_(packed)
        layer.scales_zeros.fill_(0.01)
        layer.use_native(kernel)
        layers.append(layer)
    return layers, nbytes


def _int8_layers(out_f: int, in_f: int, kernel) -> tuple[list[torch.nn.Module], int]:
    q = torch.randint(-127, 128, (out_f, in_f), dtype=torch.int8)
    layers = []
    for _ in range(_copies(out_f * in_f)):
        layer = Int8Linear(in_f, out_f, torch.bfloat16)
        layer.weight.copy_(q)
        layer.scales.fill_(0.01)
        layer.use_native(kernel)
        layers.append(layer)
    return layers, out_f * in_f + out_f * 2


def build(out_f: int, in_f: int, rows: int = 1) -> dict[str, tuple[list[torch.nn.Module], int]]:
    """label -> (layer copies, bytes of one weight) for every kernel that runs here (the GGUF
    kernels only, for more than one row)."""
    kernel = load()
    runs: dict[str, tuple[list[torch.nn.Module], int]] = {}
    if kernel is not None:
        for name, qtype in GGUF.items():
            runs[f"gguf {name}"] = _gguf_layers(qtype, out_f, in_f, kernel)
    if rows > 1:
        return runs
    runs[BASELINE] = _int4_layers(out_f, in_f, 32, None)
    if kernel is not None:
        runs["loopchat int8"] = _int8_layers(out_f, in_f, kernel)
        if torch_int4_layout_fits():
            runs["loopchat int4 g64"] = _int4_layers(out_f, in_f, 64, kernel)
    return runs


def measure(
    rounds: int, rows: int = 1
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], int]]:
    """Seconds per product (best of `rounds`), and the weight's bytes, per (kernel, shape)."""
    best: dict[tuple[str, str], float] = {}
    sizes: dict[tuple[str, str], int] = {}
    with torch.inference_mode():
        for shape, (out_f, in_f) in SHAPES.items():
            runs = build(out_f, in_f, rows)
            x = torch.randn(rows, in_f).to(torch.bfloat16)
            for _ in range(rounds):
                for label, (layers, nbytes) in runs.items():
                    for layer in layers:
                        layer(x)
                    start = time.perf_counter()
                    for layer in layers:
                        layer(x)
                    per = (time.perf_counter() - start) / len(layers)
                    key = (label, shape)
                    best[key] = min(best.get(key, per), per)
                    sizes[key] = nbytes
            del runs
    return best, sizes


def report(
    best: dict[tuple[str, str], float], sizes: dict[tuple[str, str], int], rows: int = 1
) -> None:
    labels = list(dict.fromkeys(label for label, _ in best))
    what = "batch-1 matvec" if rows == 1 else f"product with {rows} rows of x (weights x rows)"
    print(f"\nG weights/s (GB/s of weight bytes) per {what}, bf16 activations:\n")
    print("| kernel | " + " | ".join(SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    for label in labels:
        cells = []
        for shape, (out_f, in_f) in SHAPES.items():
            seconds = best[(label, shape)]
            cells.append(
                f"{out_f * in_f * rows / seconds / 1e9:.1f} "
                f"({sizes[(label, shape)] / seconds / 1e9:.1f})"
            )
        print(f"| {label} | " + " | ".join(cells) + " |")
    if rows > 1:
        return
    print(f"\nSpeed relative to {BASELINE} (time ratio, >1 = faster):\n")
    print("| kernel | " + " | ".join(SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    for label in labels:
        cells = [f"{best[(BASELINE, s)] / best[(label, s)]:.2f}" for s in SHAPES]
        print(f"| {label} | " + " | ".join(cells) + " |")
    files = {
        # file type: per shape, the block types of its matrices (Q4_K_M keeps v and down in Q6_K
        # in about half the layers, and the head in Q6_K; Q4_0 files keep the head in Q6_K)
        "Q4_0": {"q": "Q4_0", "kv": "Q4_0", "mlp": "Q4_0", "down": "Q4_0", "head": "Q6_K"},
        "Q8_0": {"q": "Q8_0", "kv": "Q8_0", "mlp": "Q8_0", "down": "Q8_0", "head": "Q8_0"},
        "Q4_K_M": {"q": "Q4_K", "kv": "Q4_K", "mlp": "Q4_K", "down": "Q4_K", "head": "Q6_K"},
    }
    names = list(SHAPES)
    if not all(("gguf Q4_0", s) in best for s in names):
        return
    print(
        "\nMatvec-only decode ceiling (tok/s) of a TinyLlama-shaped file, vs llama.cpp's decode:\n"
    )
    print("| file | ceiling tok/s | llama.cpp tok/s (PERF.md, EPYC) |")
    print("|---|---|---|")
    for file, kinds in files.items():
        t = lambda kind, s: best[(f"gguf {kind}", s)]  # noqa: E731
        seconds = 2 * LAYERS * t(kinds["q"], names[0]) + 2 * LAYERS * t(kinds["mlp"], names[2])
        if file == "Q4_K_M":  # v and down: Q6_K in half the layers
            seconds += LAYERS * t("Q4_K", names[1]) + LAYERS / 2 * (
                t("Q4_K", names[1]) + t("Q6_K", names[1])
            )
            seconds += LAYERS / 2 * (t("Q4_K", names[3]) + t("Q6_K", names[3]))
        else:
            seconds += 2 * LAYERS * t(kinds["kv"], names[1]) + LAYERS * t(kinds["down"], names[3])
        seconds += t(kinds["head"], names[4])
        print(f"| {file} | {1 / seconds:.1f} | {LLAMA_CPP.get(file, '—')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1, help="rows of x per product")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernel = load()
    if kernel is not None:
        kernel.set_threads(args.threads)
    best, sizes = measure(args.rounds, args.rows)
    report(best, sizes, args.rows)
    load_avg = (
        Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    )
    isa = kernel.isa if kernel is not None else "no compiled kernels"
    print(
        f"\nCPU: {cpu_model()} ({isa} build), {args.threads} threads, torch {torch.__version__}, "
        f"load average {' '.join(load_avg)}"
    )


if __name__ == "__main__":
    main()
