"""Time to first token of follow-up chat turns, with and without KV-cache prefix reuse.

On the TinyLlama-shaped random model (see decode.py), a chat grows by one user message and one
assistant reply per turn. With reuse, turn N prefills only what is new since turn N-1; without it,
the whole conversation is prefilled again. Prints a markdown table.

    python benchmarks/prefix_reuse.py [--turns 10] [--dtype bfloat16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.decode import write_checkpoint  # noqa: E402
from engine.generation.generate import Generator  # noqa: E402
from engine.generation.sampling import SamplingParams  # noqa: E402
from engine.loading.loader import load_model  # noqa: E402
from engine.text.chat import Message, chat_prompt_ids  # noqa: E402
from tests.fixtures.tokenizer import corpus_lines  # noqa: E402

GREEDY = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def ttft(generator: Generator, ids: list[int], reuse: bool) -> tuple[float, int]:
    started = time.perf_counter()
    generation = generator.generate(ids, GREEDY, max_new_tokens=1, reuse_cache=reuse)
    list(generation)
    return time.perf_counter() - started, generation.result.reused_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="loopchat-bench-")) / "model"
    if not (folder / "model.safetensors").is_file():
        print(f"writing a random TinyLlama-shaped checkpoint to {folder} ...", file=sys.stderr)
        write_checkpoint(folder)
    loaded = load_model(folder, dtype=args.dtype, device="cpu", max_context=2048)
    rng = random.Random(0)
    lines = corpus_lines(2000, seed=1)

    def text(n_lines: int) -> str:
        return " ".join(rng.choice(lines) for _ in range(n_lines))

    with_reuse = Generator(loaded)
    without = Generator(loaded)
    messages = [Message("system", "You are a helpful assistant.")]
    rows = []
    for turn in range(1, args.turns + 1):
        messages.append(Message("user", text(2)))
        ids = chat_prompt_ids(loaded.tokenizer, messages, loaded.chat_template)
        reuse_s, reused = ttft(with_reuse, ids, reuse=True)
        full_s, _ = ttft(without, ids, reuse=False)
        rows.append((turn, len(ids), reused, reuse_s, full_s))
        print(f"turn {turn}: {len(ids)} tokens", file=sys.stderr)
        messages.append(Message("assistant", text(4)))

    print(f"Time to first token per turn ({args.dtype}, TinyLlama-shaped random weights)\n")
    print(
        "| turn | prompt tokens | reused from cache | TTFT with reuse s | TTFT without s "
        "| speed-up |"
    )
    print("|---|---|---|---|---|---|")
    for turn, n, reused, a, b in rows:
        print(f"| {turn} | {n} | {reused} | {a:.2f} | {b:.2f} | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
