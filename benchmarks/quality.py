"""How far each dtype and weight format moves the model's predictions from float32.

Teacher forcing: the same prompts run through every configuration; at each position the next-token
distribution is compared with float32's (top-1 agreement, mean KL(fp32 || config) in nats). Twice:
the whole prompt in one pass (the prefill path: GEMMs) and one token at a time (the decode path,
where int8 runs Loopchat's own kernel with its 16-bit integer activations). Then greedy decoding:
does int8 give bf16's first 20 tokens?

The model is benchmarks/decode.py's random TinyLlama-shaped checkpoint (the project ships no
trained model); only the 512 rows of the head the tokenizer can print are compared.

    python benchmarks/quality.py --keep /tmp/tl-bench
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    ("float32", "none"),
    ("bfloat16", "none"),
    ("float16", "none"),
    ("bfloat16", "int8"),
    ("bfloat16", "int4"),
]
SPEAKABLE = 512


def prompts(count: int, length: int) -> list[list[int]]:
    return [
        [1] + [3 + (i * 7919 + p * 104729) % 500 for i in range(length - 1)] for p in range(count)
    ]


def trained_prompts(model: str, count: int, length: int) -> list[list[int]]:
    """Held-out dialogues of a trained model (text it never saw), as the engine encodes them."""
    from engine.loading.builtin import held_out_dialogues
    from engine.loading.model_folder import resolve_model
    from engine.text.tokenizer import Tokenizer

    folder = resolve_model(model)
    tokenizer = Tokenizer(folder / "tokenizer.model")
    dialogues = held_out_dialogues(folder)[:count]
    return [
        tokenizer.encode(f"[INST] {q} [/INST] {a} ", bos=True, eos=True)[:length]
        for q, a in dialogues
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--keep", type=Path, help="random checkpoint folder (decode.py)")
    source.add_argument(
        "--model", help="a trained model instead (e.g. builtin: its held-out dialogues as prompts)"
    )
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--greedy", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("LOOPCHAT_HOME", tempfile.mkdtemp(prefix="loopchat-quality-"))
    import torch

    from benchmarks.decode import write_checkpoint
    from engine.generation.generate import Generator
    from engine.generation.sampling import SamplingParams
    from engine.loading.loader import load_model

    if args.model:
        texts = trained_prompts(args.model, args.prompts, args.length)
        source = args.model
        speakable = None
    else:
        if not (args.keep / "model.safetensors").is_file():
            write_checkpoint(args.keep)
        texts = prompts(args.prompts, args.length)
        source = args.keep
        speakable = SPEAKABLE
    greedy = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    logits: dict[tuple[str, str], list[torch.Tensor]] = {}
    stepped: dict[tuple[str, str], list[torch.Tensor]] = {}
    outputs: dict[tuple[str, str], list[list[int]]] = {}
    for dtype, quant in CONFIGS:
        print(f"{dtype} {quant} ...", file=sys.stderr)
        loaded = load_model(
            source, dtype=dtype, device="cpu", quant=quant, max_context=args.length + 64
        )
        with torch.inference_mode():
            logits[(dtype, quant)] = [
                loaded.model(torch.tensor(p), 0)[:, :speakable].float() for p in texts
            ]
            stepped[(dtype, quant)] = [
                torch.cat(
                    [
                        loaded.model(torch.tensor([t]), i)[:, :speakable].float()
                        for i, t in enumerate(p)
                    ]
                )
                for p in texts
            ]
        gen = Generator(loaded)  # greedy continuations of every configuration, compared below
        outputs[(dtype, quant)] = []
        for p in texts:
            run = gen.generate(p[:16], greedy, max_new_tokens=args.greedy, reuse_cache=False)
            outputs[(dtype, quant)].append([s.token_id for s in run])
        del loaded
        gc.collect()

    ref = logits[("float32", "none")]

    def compare(got: list[torch.Tensor]) -> str:
        agree, kls = [], []
        for r, g in zip(ref, got, strict=True):
            agree.append((r.argmax(-1) == g.argmax(-1)).float().mean().item())
            kls.append(
                torch.nn.functional.kl_div(
                    g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean"
                ).item()
            )
        return f"{sum(agree) / len(agree):.3f} | {sum(kls) / len(kls):.2e}"

    print(
        "| dtype | weights | top-1 agreement with fp32, prompt pass | mean KL(fp32 ‖ it), nats, "
        "prompt pass | top-1, token by token | KL, token by token |"
    )
    print("|---|---|---|---|---|---|")
    for config in CONFIGS:
        whole, steps = compare(logits[config]), compare(stepped[config])
        print(f"| {config[0]} | {config[1]} | {whole} | {steps} |")

    def common(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))

    base = outputs[("bfloat16", "none")]
    print(f"\n| greedy, {args.greedy} tokens | same as bf16 | mean common prefix with bf16 |")
    print("|---|---|---|")
    for config in [c for c in CONFIGS if c != ("bfloat16", "none")]:
        pairs = list(zip(base, outputs[config], strict=True))
        same = sum(a == b for a, b in pairs)
        prefix = sum(common(a, b) for a, b in pairs) / len(pairs)
        print(f"| {config[0]} {config[1]} | {same}/{len(pairs)} | {prefix:.1f} |")
    top = sum(r.softmax(-1).max(-1).values.mean().item() for r in ref) / len(ref)
    print(
        f"\n{len(texts)} prompts x {args.length} tokens (greedy from their first 16); fp32's mean "
        f"top-1 probability {top:.3f}"
    )


if __name__ == "__main__":
    main()
