"""How far each dtype and weight format moves the model's predictions from float32.

Teacher forcing: the same prompts run through every configuration; at each position the next-token
distribution is compared with float32's (top-1 agreement, mean KL(fp32 || config) in nats). Then
greedy decoding: does int8 give bf16's first 20 tokens?

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, required=True, help="checkpoint folder (decode.py)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--greedy", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("LOOPCHAT_HOME", tempfile.mkdtemp(prefix="loopchat-quality-"))
    import torch

    from benchmarks.decode import write_checkpoint
    from engine.generate import Generator
    from engine.loader import load_model
    from engine.sampling import SamplingParams

    if not (args.keep / "model.safetensors").is_file():
        write_checkpoint(args.keep)
    greedy = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    texts = prompts(args.prompts, args.length)
    logits: dict[tuple[str, str], list[torch.Tensor]] = {}
    outputs: dict[tuple[str, str], list[list[int]]] = {}
    for dtype, quant in CONFIGS:
        print(f"{dtype} {quant} ...", file=sys.stderr)
        loaded = load_model(
            args.keep, dtype=dtype, device="cpu", quant=quant, max_context=args.length + 64
        )
        with torch.inference_mode():
            logits[(dtype, quant)] = [
                loaded.model(torch.tensor(p), 0)[:, :SPEAKABLE].float() for p in texts
            ]
        gen = Generator(loaded)  # greedy continuations of every configuration, compared below
        outputs[(dtype, quant)] = []
        for p in texts:
            run = gen.generate(p[:16], greedy, max_new_tokens=args.greedy, reuse_cache=False)
            outputs[(dtype, quant)].append([s.token_id for s in run])
        del loaded
        gc.collect()

    ref = logits[("float32", "none")]
    print("| dtype | weights | top-1 agreement with fp32 | mean KL(fp32 ‖ it), nats |")
    print("|---|---|---|---|")
    for config in CONFIGS[1:]:
        agree, kls = [], []
        for r, g in zip(ref, logits[config], strict=True):
            agree.append((r.argmax(-1) == g.argmax(-1)).float().mean().item())
            kls.append(
                torch.nn.functional.kl_div(
                    g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean"
                ).item()
            )
        print(
            f"| {config[0]} | {config[1]} | {sum(agree) / len(agree):.3f} "
            f"| {sum(kls) / len(kls):.2e} |"
        )

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
        f"top-1 probability {top:.3f} (a random model's next-token distributions are nearly flat)"
    )


if __name__ == "__main__":
    main()
