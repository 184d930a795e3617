"""Decode speed, prefill time and load memory of the engine beside transformers, in one run.

A random model shaped like TinyLlama-1.1B (hidden 2048, 22 layers, 32 heads, 4 kv heads,
intermediate 5632, vocab 32000) is written once as a bf16 safetensors checkpoint. Each measurement
runs in a fresh process so peak RSS belongs to that load alone. Prints a markdown table with ratios.

    python benchmarks/decode.py [--dtypes float32 bfloat16] [--tokens 32] [--keep DIR]
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
PROMPT_SHORT = 16
PROMPT_LONG = 512


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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_engine(folder: str, dtype: str, tokens: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from engine.generate import Generator
    from engine.loader import load_model
    from engine.sampling import SamplingParams

    t0 = time.perf_counter()
    loaded = load_model(folder, dtype=dtype, device="cpu", max_context=PROMPT_LONG + tokens + 8)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_bytes()
    greedy = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    gen = Generator(loaded)  # the app's own prefill chunking
    out = {
        "load_s": load_s,
        "weights": loaded.weights_bytes,
        "threads": torch.get_num_threads(),
        "load_rss": rss_after_load,
    }
    for n in (PROMPT_SHORT, PROMPT_LONG):
        generation = gen.generate(prompt(n), greedy, max_new_tokens=tokens, reuse_cache=False)
        steps = list(generation)
        result = generation.result
        assert len(steps) == tokens, result.stop_reason
        out[f"decode_{n}"] = result.decode_tokens_per_s
        out[f"prefill_{n}"] = result.prefill_s
    out["peak_rss"] = peak_rss_bytes()  # over load and generation
    return out


def measure_transformers(folder: str, dtype: str, tokens: int) -> dict:
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
    }

    def run(n: int, new: int) -> float:
        ids = torch.tensor([prompt(n)])
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(
                ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
            )
        return time.perf_counter() - t

    for n in (PROMPT_SHORT, PROMPT_LONG):
        first = run(n, 1)  # prefill + the first token
        total = run(n, tokens)
        out[f"decode_{n}"] = (tokens - 1) / (total - first)
        out[f"prefill_{n}"] = first
    out["peak_rss"] = peak_rss_bytes()  # over load and generation (weights load lazily)
    return out


def child(args: argparse.Namespace) -> None:
    fn = measure_engine if args.system == "engine" else measure_transformers
    print(json.dumps(fn(args.folder, args.dtype, args.tokens)))


def run_child(system: str, folder: Path, dtype: str, tokens: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            system,
            "--folder",
            str(folder),
            "--dtype",
            dtype,
            "--tokens",
            str(tokens),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{system} {dtype} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """Per-field median over repeated runs (shared machines are noisy)."""
    import statistics

    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and value is not None:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
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
    args = parser.parse_args()
    if args.child:
        args.system = args.child
        child(args)
        return

    tmp = None
    folder = args.keep
    if folder is None:
        tmp = tempfile.mkdtemp(prefix="loopchat-bench-")
        folder = Path(tmp) / "tinyllama-shaped"
    if not (folder / "model.safetensors").is_file():
        print(f"writing a random TinyLlama-shaped checkpoint to {folder} ...", file=sys.stderr)
        write_checkpoint(folder)
    rows = []
    try:
        for dtype in args.dtypes:
            runs: dict[str, list[dict]] = {"transformers": [], "engine": []}
            for attempt in range(args.repeat):
                for system in ("transformers", "engine"):
                    print(
                        f"measuring {system} {dtype} ({attempt + 1}/{args.repeat}) ...",
                        file=sys.stderr,
                    )
                    runs[system].append(run_child(system, folder, dtype, args.tokens))
            for system in ("transformers", "engine"):
                rows.append((system, dtype, median_of(runs[system])))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        "| system | dtype | load s | RSS after load / weights | peak RSS / weights "
        "| prefill 512 s | decode tok/s @16 | decode tok/s @512 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    by_key = {(s, d): r for s, d, r in rows}
    for system, dtype, r in rows:
        after = "—" if r["load_rss"] is None else f"{r['load_rss'] / r['weights']:.2f}"
        print(
            f"| {system} | {dtype} | {r['load_s']:.1f} | {after} | "
            f"{r['peak_rss'] / r['weights']:.2f} | "
            f"{r['prefill_512']:.2f} | {r['decode_16']:.2f} | {r['decode_512']:.2f} |"
        )
    print()
    print(
        "| dtype | decode @16 engine/transformers | decode @512 engine/transformers "
        "| prefill 512 transformers/engine |"
    )
    print("|---|---|---|---|")
    for dtype in args.dtypes:
        e, t = by_key[("engine", dtype)], by_key[("transformers", dtype)]
        print(
            f"| {dtype} | {e['decode_16'] / t['decode_16']:.2f}x | "
            f"{e['decode_512'] / t['decode_512']:.2f}x | "
            f"{t['prefill_512'] / e['prefill_512']:.2f}x |"
        )
    print(
        f"\n{rows[0][2]['threads']} threads, {args.tokens} decode tokens per measurement, "
        f"median of {args.repeat} run(s) each"
    )


if __name__ == "__main__":
    main()
