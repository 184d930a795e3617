"""Decode speed, prefill time and load memory of the engine beside transformers, in one run.

A random model shaped like TinyLlama-1.1B (hidden 2048, 22 layers, 32 heads, 4 kv heads,
intermediate 5632, vocab 32000) is written once as a bf16 safetensors checkpoint. Each measurement
runs in a fresh process so peak RSS belongs to that load alone. Prints markdown tables with ratios:
every system, dtype and weight format (--quants), then (--busy) decode with one busy background
process beside it, governed threads against a fixed two.

`--shape 7b` writes a Llama-2-7B-shaped checkpoint (13.5 GB, streamed tensor by tensor) and reports
the engine's first and second (cached) load time and peak RSS per weight format.

Children share one fresh LOOPCHAT_HOME, so the first engine load of each format measures the
kernel choice and builds the quantized cache, as a user's first load does; that load is reported
separately ("first load"), and the timed runs after it load from the cache.

    python benchmarks/decode.py [--dtypes float32 bfloat16] [--quants none int8 int4] [--busy]
        [--tokens 32] [--repeat 3] [--keep DIR]
    python benchmarks/decode.py --shape 7b --quants int4 int8 --keep /tmp/llama7b-shaped
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(dim=2048, layers=22, heads=32, kv_heads=4, hidden=5632, vocab=32000)
SHAPE_7B = dict(dim=4096, layers=32, heads=32, kv_heads=32, hidden=11008, vocab=32000)
PROMPT_SHORT = 16
PROMPT_LONG = 512


def _config(shape: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape["dim"],
        "intermediate_size": shape["hidden"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        "vocab_size": shape["vocab"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def write_streamed_checkpoint(folder: Path, shape: dict) -> None:
    """A bf16 safetensors checkpoint written tensor by tensor: never more than one in memory.

    Values come from one 64 M-element random pool read at shifting offsets (quantization and
    matmul cost do not depend on them; generating 7 billion fresh ones would take minutes).
    """
    import struct

    import torch

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    d, h, kv, f = shape["dim"], shape["heads"], shape["kv_heads"], shape["hidden"]
    hd = d // h
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (shape["vocab"], d),
        "model.norm.weight": (d,),
        "lm_head.weight": (shape["vocab"], d),
    }
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h * hd, d),
            p + "self_attn.k_proj.weight": (kv * hd, d),
            p + "self_attn.v_proj.weight": (kv * hd, d),
            p + "self_attn.o_proj.weight": (d, h * hd),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shp in shapes.items():
        n = 2 * int(torch.tensor(shp).prod()) if shp else 2
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * ((-len(text)) % 8)
    pool = (torch.randn(64 * 2**20, generator=torch.Generator().manual_seed(0)) * 0.02).to(
        torch.bfloat16
    )
    tmp = folder / "model.safetensors.part"
    with tmp.open("wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for k, (name, shp) in enumerate(shapes.items()):
            numel = int(torch.tensor(shp).prod())
            if name.endswith("norm.weight"):
                t = torch.ones(numel, dtype=torch.bfloat16)
            else:
                t = torch.empty(numel, dtype=torch.bfloat16)
                at, step = 0, (k * 7919) % (len(pool) // 2)
                while at < numel:
                    piece = pool[step : step + min(numel - at, len(pool) - step)]
                    t[at : at + len(piece)] = piece
                    at += len(piece)
                    step = 0
                if name == "lm_head.weight":
                    t.view(shp)[512:] = 0  # greedy stays inside the 512-piece tokenizer
                    t.view(shp)[2] = 0  # and never ends early on EOS
            out.write(t.view(torch.uint8).numpy())
            del t
    tmp.rename(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(_config(shape)))
    tok = train_tokenizer(folder / "tok")
    shutil.move(tok, folder / "tokenizer.model")
    shutil.rmtree(folder / "tok")


def write_checkpoint(folder: Path) -> None:
    """HF-layout bf16 checkpoint with random weights, streamed tensor by tensor to save memory."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    d, h, kv = SHAPE["dim"], SHAPE["heads"], SHAPE["kv_heads"]
    hd = d // h
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rnd(SHAPE["vocab"], d), "model.norm.weight": rnd(d) + 1}
    head = rnd(SHAPE["vocab"], d)
    # The benchmark tokenizer has 512 pieces; rows beyond it get zero logits so greedy decoding
    # stays inside the vocabulary the tokenizer can print. The matmul cost is unchanged.
    head[512:] = 0
    head[2] = 0  # nor may it end early on EOS: a zero logit never beats 509 random ones
    tensors["lm_head.weight"] = head
    for i in range(SHAPE["layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": rnd(h * hd, d),
            p + "self_attn.k_proj.weight": rnd(kv * hd, d),
            p + "self_attn.v_proj.weight": rnd(kv * hd, d),
            p + "self_attn.o_proj.weight": rnd(d, h * hd),
            p + "mlp.gate_proj.weight": rnd(SHAPE["hidden"], d),
            p + "mlp.up_proj.weight": rnd(SHAPE["hidden"], d),
            p + "mlp.down_proj.weight": rnd(d, SHAPE["hidden"]),
            p + "input_layernorm.weight": rnd(d) + 1,
            p + "post_attention_layernorm.weight": rnd(d) + 1,
        }
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": SHAPE["hidden"],
        "num_hidden_layers": SHAPE["layers"],
        "num_attention_heads": h,
        "num_key_value_heads": kv,
        "vocab_size": SHAPE["vocab"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok = train_tokenizer(folder / "tok")
    shutil.move(tok, folder / "tokenizer.model")
    shutil.rmtree(folder / "tok")


def prompt(n: int) -> list[int]:
    return [1] + [3 + (i * 7919) % 500 for i in range(n - 1)]


def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and
    exec, so a child would report its parent's peak (e.g. from writing the checkpoint)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_engine(folder: str, dtype: str, quant: str, tokens: int, contexts: list[int]) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from engine.generation.generate import Generator
    from engine.generation.sampling import SamplingParams
    from engine.loading.loader import load_model

    t0 = time.perf_counter()
    loaded = load_model(
        folder, dtype=dtype, device="cpu", max_context=max(contexts) + tokens + 8, quant=quant
    )
    load_s = time.perf_counter() - t0
    info = loaded.describe()
    out = {
        "load_s": load_s,
        "weights": loaded.weights_bytes,
        "threads": torch.get_num_threads(),
        "load_rss": peak_rss_bytes(),
        "kernel": f"{info['kernel']}@{info['threads']} ({info['kernel_source']})",
        "cache_hit": info.get("quant_cache_hit"),
    }
    greedy = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    gen = Generator(loaded)  # the app's own prefill chunking
    for n in contexts:
        generation = gen.generate(prompt(n), greedy, max_new_tokens=tokens, reuse_cache=False)
        steps = list(generation)
        result = generation.result
        assert len(steps) == tokens, result.stop_reason
        out[f"decode_{n}"] = result.decode_tokens_per_s
        out[f"prefill_{n}"] = result.prefill_s
    out["peak_rss"] = peak_rss_bytes()  # over load and generation
    return out


def measure_transformers(folder: str, dtype: str, tokens: int, contexts: list[int]) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch_dtype = getattr(torch, dtype)
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch_dtype).eval()
    load_s = time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Weights are mapped lazily, so RSS right after from_pretrained understates; only the peak
    # after generation is comparable.
    out = {
        "load_s": load_s,
        "weights": weights,
        "threads": torch.get_num_threads(),
        "load_rss": None,
        "kernel": f"HF@{torch.get_num_threads()}",
        "cache_hit": None,
    }

    def run(n: int, new: int) -> float:
        ids = torch.tensor([prompt(n)])
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(
                ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
            )
        return time.perf_counter() - t

    for n in contexts:
        first = run(n, 1)  # prefill + the first token
        total = run(n, tokens)
        out[f"decode_{n}"] = (tokens - 1) / (total - first)
        out[f"prefill_{n}"] = first
    out["peak_rss"] = peak_rss_bytes()  # over load and generation (weights load lazily)
    return out


def child(args: argparse.Namespace) -> None:
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.child == "engine":
        result = measure_engine(args.folder, args.dtype, args.quant, args.tokens, contexts)
    else:
        result = measure_transformers(args.folder, args.dtype, args.tokens, contexts)
    print(json.dumps(result))


def run_child(
    system: str,
    folder: Path,
    dtype: str,
    tokens: int,
    home: Path,
    quant: str = "none",
    contexts: tuple[int, ...] = (PROMPT_SHORT, PROMPT_LONG),
    env_extra: dict | None = None,
) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LOOPCHAT_HOME=str(home), **(env_extra or {}))
    command = [sys.executable, __file__, "--child", system, "--folder", str(folder)]
    command += ["--dtype", dtype, "--tokens", str(tokens), "--quant", quant]
    command += ["--contexts", ",".join(str(c) for c in contexts)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{system} {dtype} {quant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """Per-field median over repeated runs (shared machines are noisy)."""
    import statistics

    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    return out


class Busy:
    """One busy background process (a Python spin loop), like a build or a browser tab."""

    def __enter__(self) -> Busy:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def tinyllama(args: argparse.Namespace, folder: Path, home: Path) -> None:
    # transformers in fp16 on a CPU is no reference anyone uses (and very slow); quantized
    # weights run with bf16 activations (fp32 ones make torch's int8 kernel ~10x slower).
    configs = [("transformers", d, "none") for d in args.dtypes if d != "float16"] + [
        ("engine", d, q) for d in args.dtypes for q in args.quants if q == "none" or d == "bfloat16"
    ]
    first: dict[tuple[str, str], dict] = {}
    for system, dtype, quant in configs:
        if system == "engine":
            print(f"first load engine {dtype} {quant} ...", file=sys.stderr)
            first[(dtype, quant)] = run_child(
                "engine", folder, dtype, 4, home, quant, contexts=(PROMPT_SHORT,)
            )
    runs: dict[tuple[str, str, str], list[dict]] = {c: [] for c in configs}
    for attempt in range(args.repeat):
        for config in configs:  # interleaved: a burst of background load hits all alike
            print(
                f"measuring {' '.join(config)} ({attempt + 1}/{args.repeat}) ...", file=sys.stderr
            )
            runs[config].append(
                run_child(config[0], folder, config[1], args.tokens, home, config[2])
            )
    rows = {c: median_of(r) for c, r in runs.items()}
    base_rss = rows.get(("engine", "bfloat16", "none"), {}).get("peak_rss")

    print(
        "| system | dtype | weights | kernel@threads | first load s | load s | weights GB "
        "| peak RSS GB | peak RSS / engine bf16 | prefill 512 s | decode tok/s @16 "
        "| decode tok/s @512 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (system, dtype, quant), r in rows.items():
        f = first.get((dtype, quant)) if system == "engine" else None
        rel = f"{r['peak_rss'] / base_rss:.2f}" if base_rss else "—"
        weights = quant if system == "engine" else "—"
        first_s = f"{f['load_s']:.1f}" if f else "—"
        print(
            f"| {system} | {dtype} | {weights} | {r['kernel']} | {first_s} | {r['load_s']:.1f} | ",
            end="",
        )
        print(
            f"{_gb(r['weights'])} | {_gb(r['peak_rss'])} | {rel} | {r['prefill_512']:.2f} "
            f"| {r['decode_16']:.2f} | {r['decode_512']:.2f} |"
        )
    print()
    print("| ratio | decode @16 | decode @512 | prefill 512 (time ratio, >1 = faster) |")
    print("|---|---|---|---|")
    for dtype in args.dtypes:
        e, t = rows.get(("engine", dtype, "none")), rows.get(("transformers", dtype, "none"))
        if e and t:
            print(
                f"| engine / transformers, {dtype} | {e['decode_16'] / t['decode_16']:.2f}x "
                f"| {e['decode_512'] / t['decode_512']:.2f}x "
                f"| {t['prefill_512'] / e['prefill_512']:.2f}x |"
            )
    sixteen = [
        r for (s, d, q), r in rows.items() if s == "engine" and q == "none" and d != "float32"
    ]
    if sixteen:
        best = max(sixteen, key=lambda r: r["decode_16"])
        for quant in ("int8", "int4"):
            for dtype in args.dtypes:
                r = rows.get(("engine", dtype, quant))
                if r:
                    print(
                        f"| engine {quant} ({dtype}) / best engine 16-bit | "
                        f"{r['decode_16'] / best['decode_16']:.2f}x "
                        f"| {r['decode_512'] / best['decode_512']:.2f}x "
                        f"| {best['prefill_512'] / r['prefill_512']:.2f}x |"
                    )
    print(
        f"\n{args.tokens} decode tokens per measurement, median of {args.repeat} interleaved "
        f"run(s); CPU: {cpu_name()}"
    )
    if args.busy:
        busy_table(args, folder, home)


def busy_table(args: argparse.Namespace, folder: Path, home: Path) -> None:
    """Decode @16 quiet and beside one busy process: the governor against a fixed 2 threads."""
    tokens = max(args.tokens, 96)  # long enough for the governor's probes
    modes = {"governed (default)": {}, "fixed 2 threads": {"LOOPCHAT_THREADS": "2"}}
    results: dict[tuple[str, str, bool], list[float]] = {}
    for attempt in range(args.repeat):
        for quant in args.quants:
            for name, env in modes.items():
                for busy in (False, True):
                    print(f"busy={busy} {quant} {name} ({attempt + 1}) ...", file=sys.stderr)
                    if busy:
                        with Busy():
                            r = run_child(
                                "engine", folder, "bfloat16", tokens, home, quant,
                                contexts=(PROMPT_SHORT,), env_extra=env,
                            )  # fmt: skip
                    else:
                        r = run_child(
                            "engine", folder, "bfloat16", tokens, home, quant,
                            contexts=(PROMPT_SHORT,), env_extra=env,
                        )  # fmt: skip
                    results.setdefault((quant, name, busy), []).append(r["decode_16"])
    import statistics

    print("\n| bf16 weights | threads | decode quiet tok/s | with 1 busy process | kept |")
    print("|---|---|---|---|---|")
    for quant in args.quants:
        for name in modes:
            quiet = statistics.median(results[(quant, name, False)])
            loaded = statistics.median(results[(quant, name, True)])
            print(f"| {quant} | {name} | {quiet:.2f} | {loaded:.2f} | {loaded / quiet:.0%} |")
    print(f"\n{tokens} decode tokens at context 16, median of {args.repeat} run(s)")


def seven_b(args: argparse.Namespace, folder: Path, home: Path) -> None:
    """First and cached load time and peak RSS of the engine on a 7B-shaped model per format."""
    context = 64
    print("| weights | load | load s | peak RSS GB (load + generation) | decode tok/s @64 |")
    print("|---|---|---|---|---|")
    for quant in args.quants:
        for label in ("first (quantize + cache)", "second (cached)"):
            print(f"7b {quant} {label} ...", file=sys.stderr)
            r = run_child("engine", folder, "bfloat16", 8, home, quant, contexts=(context,))
            print(
                f"| {quant} | {label} | {r['load_s']:.1f} | {_gb(r['peak_rss'])} "
                f"| {r[f'decode_{context}']:.2f} |"
            )
    print(f"\nbf16 activations, KV cache for {context + 16} positions; CPU: {cpu_name()}")


def cpu_name() -> str:
    sys.path.insert(0, str(ROOT))
    from engine.kernels.tuning import cpu_model

    return cpu_model()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--quants", nargs="+", default=["none"], choices=["none", "int8", "int4"])
    parser.add_argument("--shape", choices=["tinyllama", "7b"], default="tinyllama")
    parser.add_argument("--busy", action="store_true", help="also decode beside a busy process")
    parser.add_argument("--tokens", type=int, default=32, help="decode tokens per measurement")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the checkpoint here")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per system (alternating); the table shows medians",
    )
    parser.add_argument("--child", choices=["engine", "transformers"])
    parser.add_argument("--folder")
    parser.add_argument("--dtype")
    parser.add_argument("--quant", default="none")
    parser.add_argument("--contexts", default=f"{PROMPT_SHORT},{PROMPT_LONG}")
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    tmp = tempfile.mkdtemp(prefix="loopchat-bench-")
    home = Path(tmp) / "home"  # fresh kernel choices and quantized caches for this run
    folder = args.keep or Path(tmp) / f"{args.shape}-shaped"
    try:
        if not (folder / "model.safetensors").is_file():
            print(
                f"writing a random {args.shape}-shaped checkpoint to {folder} ...", file=sys.stderr
            )
            if args.shape == "7b":
                write_streamed_checkpoint(folder, SHAPE_7B)
            else:
                write_checkpoint(folder)
        if args.shape == "7b":
            seven_b(args, folder, home)
        else:
            tinyllama(args, folder, home)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
