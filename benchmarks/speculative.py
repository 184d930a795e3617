"""Speculative decoding against plain decoding, in one run: tokens/s, acceptance, passes.

Three cases (issue 25), each measured beside plain greedy decoding of the same prompt in the same
process, so the ratios compare like with like:

  (a) the built-in model with its trained draft (resources/builtin_draft) and with prompt lookup,
      on held-out dictionary questions in the chat format;
  (b) prompt lookup on a rewrite prompt (the reply repeats much of its prompt);
  (c) a Llama-2-7B-shaped target with a TinyLlama-1.1B-shaped draft (random weights, int4 both):
      what one verification pass of k+1 positions costs next to one decode step, and tokens/s
      when the draft is right a chosen share of the time. Random weights agree by chance only,
      so the acceptance is set by construction: the draft model runs for real (its time counts)
      and then each of its guesses is replaced by the target's own greedy token with probability
      `accept`, else by a token the target would not pick.

    python benchmarks/speculative.py [--cases a b c] [--tokens 64] [--k 4] [--keep DIR]

Greedy everywhere (the output is then identical to plain decoding, which the run checks), bf16
activations, the CPU's cores as the engine chooses. Prints markdown tables and the CPU's name.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE_7B = dict(dim=4096, layers=32, heads=32, kv_heads=32, hidden=11008, vocab=32000)
SHAPE_1B = dict(dim=2048, layers=22, heads=32, kv_heads=4, hidden=5632, vocab=32000)
REWRITE = (
    'Rewrite this sentence with "dog" in place of "cat": the cat sat on the mat, and the cat '
    "looked at the door, and the cat waited for the rain to stop before the cat went out."
)


def timed_reply(engine, prompt: list[int], tokens: int) -> dict:
    from engine.events import GREEDY

    started = time.perf_counter()
    reply = engine.reply(prompt, GREEDY, max_new_tokens=tokens, report_top=0)
    steps = list(reply)
    result = reply.result
    elapsed = time.perf_counter() - started - result.prefill_s
    draft = result.draft
    return {
        "ids": [s.token_id for s in steps],
        "tokens": len(steps),
        "tps": (len(steps) - 1) / elapsed if len(steps) > 1 and elapsed > 0 else 0.0,
        "proposed": draft.proposed if draft else 0,
        "accepted": draft.accepted if draft else 0,
        "passes": draft.passes if draft else max(0, len(steps) - 1),
    }


def compare(engine, prompts: list[list[int]], tokens: int, drafts: list[tuple[str, object]]):
    """Rows of (label, plain tok/s, speculative tok/s, acceptance, tokens per pass, same?)."""
    rows = []
    for label, spec in drafts:
        plain_tps, spec_tps, accepted, proposed, steps, passes = [], [], 0, 0, 0, 0
        same = True
        for prompt in prompts:
            engine.use_draft(None)
            engine.reply(prompt[:2], max_new_tokens=1)  # warm up, and drop the cached prompt
            plain = timed_reply(engine, prompt, tokens)
            if isinstance(spec, str):
                engine.use_draft(spec, k=ARGS.k)
            else:
                spec(engine)
            engine.reply(prompt[:2], max_new_tokens=1)
            fast = timed_reply(engine, prompt, tokens)
            same &= fast["ids"] == plain["ids"]
            plain_tps.append(plain["tps"])
            spec_tps.append(fast["tps"])
            accepted += fast["accepted"]
            proposed += fast["proposed"]
            steps += fast["tokens"]
            passes += fast["passes"]
        p = sum(plain_tps) / len(plain_tps)
        s = sum(spec_tps) / len(spec_tps)
        rows.append(
            (
                label,
                p,
                s,
                accepted / proposed if proposed else 0.0,
                (steps - len(prompts)) / passes if passes else 0.0,
                same,
            )
        )
    engine.use_draft(None)
    return rows


def print_rows(title: str, rows) -> None:
    print(f"\n### {title}\n")
    print(
        "| draft | plain tok/s | speculative tok/s | ratio | accepted | tokens / pass | same text |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, p, s, acc, per_pass, same in rows:
        ratio = s / p if p else 0.0
        print(
            f"| {label} | {p:.1f} | {s:.1f} | {ratio:.2f}× | {acc:.0%} | {per_pass:.2f} "
            f"| {'yes' if same else 'NO'} |"
        )


def case_builtin(tokens: int) -> None:
    from engine.front_door import Engine
    from engine.loading.builtin import builtin_dir, held_out_dialogues
    from engine.text.chat import Message

    engine = Engine.open("builtin", dtype="bfloat16")
    questions = [q for q, _ in held_out_dialogues(builtin_dir())[: ARGS.prompts]]
    prompts = [engine.conversation_ids([Message("user", q)]) for q in questions]
    rows = compare(
        engine,
        prompts,
        tokens,
        [("builtin-draft (trained sibling)", "builtin-draft"), ("prompt lookup", "lookup")],
    )
    print_rows(f"(a) built-in model, {len(prompts)} held-out questions, {tokens} tokens", rows)
    rewrite = [engine.conversation_ids([Message("user", REWRITE)])]
    rows = compare(engine, rewrite, tokens, [("prompt lookup", "lookup")])
    print_rows("(b) prompt lookup on a rewrite prompt (built-in model)", rows)


class OracleDraft:
    """The 1.1B-shaped draft model, run for real, whose guesses are then set to be right with
    probability `accept` (the target's own greedy tokens, known from a plain run)."""

    kind = "model"

    def __init__(self, inner, truth: list[int], prompt_len: int, accept: float, seed: int):
        self.inner, self.truth, self.prompt_len = inner, truth, prompt_len
        self.accept = accept
        self.rng = random.Random(seed)
        self.name = "oracle"

    def propose(self, history, k, params, generator):
        proposal = self.inner.propose(history, k, params, generator)
        at = len(history) - self.prompt_len
        tokens = []
        for i in range(len(proposal.tokens)):
            right = self.truth[at + i] if at + i < len(self.truth) else 3
            if len(tokens) == i and self.rng.random() < self.accept:
                tokens.append(right)
            else:
                tokens.append(4 if right != 4 else 5)  # a token the target does not pick
        proposal.tokens = tokens
        return proposal

    def close(self) -> None:
        self.inner.close()


def case_seven_b(tokens: int, keep: Path | None) -> None:
    import torch

    from benchmarks.decode import write_streamed_checkpoint
    from engine.events import GREEDY
    from engine.front_door import Engine
    from engine.generation.speculative import ModelDraft
    from engine.loading.loader import load_model

    base = keep or Path(tempfile.mkdtemp(prefix="loopchat-spec-"))
    big, small = base / "7b-shaped", base / "1b-shaped"
    for folder, shape in ((big, SHAPE_7B), (small, SHAPE_1B)):
        if not (folder / "model.safetensors").exists():
            print(f"writing {folder} ...", file=sys.stderr)
            write_streamed_checkpoint(folder, shape)
    shutil.copy(big / "tokenizer.model", small / "tokenizer.model")  # one vocabulary
    print("loading (int4; the first load quantizes) ...", file=sys.stderr)
    engine = Engine.open(big, dtype="bfloat16", quant="int4", max_context=256)
    draft_model = load_model(small, dtype="bfloat16", quant="int4", max_context=256)
    model = engine._generator.loaded.model  # the pass costs, measured directly
    prompt = [1, *range(300, 316)]

    def pass_ms(n: int, at: int) -> float:
        ids = torch.tensor(prompt[:n] if n <= len(prompt) else [7] * n)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            with torch.inference_mode():
                model(ids, at)
            best = min(best, time.perf_counter() - started)
        return best * 1000

    with torch.inference_mode():
        model(torch.tensor(prompt), 0)
    step = pass_ms(1, len(prompt))
    print("\n### (c) 7B-shaped target, 1.1B-shaped draft (random weights, int4)\n")
    print("| positions in one pass | ms | × one decode step |")
    print("|---|---|---|")
    for n in (1, 2, 3, 5, 9):
        ms = pass_ms(n, len(prompt))
        print(f"| {n} | {ms:.0f} | {ms / step:.2f} |")
    draft_step = ModelDraft(draft_model)
    started = time.perf_counter()
    draft_step.propose(prompt, 8, GREEDY, None)
    draft_ms = (time.perf_counter() - started) * 1000 / 8
    print(f"\ndraft model: {draft_ms:.0f} ms per guessed token (target step: {step:.0f} ms)")

    plain = timed_reply(engine, prompt, tokens)
    truth = plain["ids"]
    print(
        "\n| draft right (by construction) | plain tok/s | speculative tok/s | ratio "
        "| accepted | tokens / pass | same text |"
    )
    print("|---|---|---|---|---|---|---|")
    for accept in (1.0, 0.8, 0.6, 0.4):
        engine._draft = OracleDraft(ModelDraft(draft_model), truth, len(prompt), accept, 1)
        engine._draft_k = ARGS.k
        engine._draft_spec = "oracle"
        fast = timed_reply(engine, prompt, tokens)
        acc = fast["accepted"] / fast["proposed"] if fast["proposed"] else 0.0
        per_pass = (fast["tokens"] - 1) / fast["passes"] if fast["passes"] else 0.0
        print(
            f"| {accept:.0%} | {plain['tps']:.2f} | {fast['tps']:.2f} "
            f"| {fast['tps'] / plain['tps']:.2f}× | {acc:.0%} | {per_pass:.2f} "
            f"| {'yes' if fast['ids'] == truth else 'NO'} |"
        )


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["a", "c"], choices=["a", "b", "c"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="tokens drafted per pass")
    parser.add_argument("--prompts", type=int, default=8, help="held-out questions in (a)")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep (c)'s checkpoints")
    ARGS = parser.parse_args()
    from engine.kernels.tuning import cpu_model

    print(f"CPU: {cpu_model()}; k = {ARGS.k}; greedy; bf16 activations")
    if "a" in ARGS.cases or "b" in ARGS.cases:
        case_builtin(ARGS.tokens)
    if "c" in ARGS.cases:
        case_seven_b(min(ARGS.tokens, 32), ARGS.keep)
    print(json.dumps({"done": True}), file=sys.stderr)


ARGS = argparse.Namespace(k=4, prompts=8)

if __name__ == "__main__":
    main()
