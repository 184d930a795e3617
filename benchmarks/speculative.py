"""Speculative decoding against plain decoding, in one run: tokens/s, acceptance, passes.

Three cases (issue 25), each measured beside plain greedy decoding of the same prompt in the same
process, so the ratios compare like with like:

  (a) the built-in model with its trained draft (resources/builtin_draft) and with prompt lookup,
      on held-out dictionary questions in the chat format;
  (b) prompt lookup on a rewrite prompt (the reply repeats much of its prompt);
  (c) a Llama-2-7B-shaped target with a TinyLlama-1.1B-shaped draft (random weights, int4 both):
      what one verification pass of k+1 positions costs next to one decode step, and tokens/s
      when the draft is right a chosen share of the time. Random weights agree by chance only,
      so the acceptance is set by construction (`ConstructedAcceptance`): the draft model runs
      for real and its time counts, and each check keeps a guess with a chosen probability.

    python benchmarks/speculative.py [--cases a b c] [--tokens 64] [--k 4] [--keep DIR]

Greedy everywhere ((a) and (b) check that the output is identical to plain decoding), bf16
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
    """One greedy reply; tok/s is the engine's own (first token to last, prompt excluded)."""
    from engine.events import GREEDY

    reply = engine.reply(prompt, GREEDY, max_new_tokens=tokens, report_top=0)
    steps = list(reply)
    result = reply.result
    draft = result.draft
    return {
        "ids": [s.token_id for s in steps],
        "tokens": len(steps),
        "tps": result.decode_tokens_per_s,
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


class ConstructedAcceptance:
    """Greedy checks that keep a guess with probability `accept`, whatever it is, and otherwise
    take the model's own token: the acceptance rate by construction, with every real cost in
    place (the draft model's passes, the one verification pass, the checks, the rollback).

    Replaying the target's known greedy tokens as guesses would not do: a random model's logits
    lie so close together that bf16 rounds a k-row product differently from a one-row one often
    enough to flip a greedy choice, after which every replayed guess is wrong. (What the check
    keeps is exact in the engine itself: tests/test_speculative.py.)"""

    def __init__(self, accept: float, seed: int) -> None:
        self.accept = accept
        self.rng = random.Random(seed)
        self._saved = None

    def __enter__(self) -> ConstructedAcceptance:
        from engine.generation import speculative

        self._saved = speculative.Verifier.check
        rng, accept = self.rng, self.accept

        def check(verifier, scores, history, proposed, q):
            verifier.proposed += 1
            if rng.random() < accept:
                verifier.accepted += 1
                pick = speculative.reported(scores, proposed, verifier.report_top)
                return speculative.Pick(pick, drafted=True)
            return speculative.Pick(verifier.choose(scores, history))

        speculative.Verifier.check = check
        return self

    def __exit__(self, *exc: object) -> None:
        from engine.generation import speculative

        speculative.Verifier.check = self._saved


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
    threads = torch.get_num_threads()  # the target's measured choice (see Engine.use_draft)
    draft_model = load_model(small, dtype="bfloat16", quant="int4", max_context=256)
    torch.set_num_threads(threads)
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

    # A plain reply first: it is the baseline, and the thread governor settles on the decode
    # loop's thread count, which the pass costs below are then measured with.
    plain = timed_reply(engine, prompt, tokens)
    with torch.inference_mode():
        model(torch.tensor(prompt), 0)
    from engine.kernels.threads import decoding

    generator = engine._generator
    # The threads a decode pass runs with (the decode loop's, not a prefill's).
    context = decoding(generator._native, generator._governor)
    context.__enter__()
    step = pass_ms(1, len(prompt))
    print("\n### (c) 7B-shaped target, 1.1B-shaped draft (random weights, int4)\n")
    print("| positions in one pass | ms | × one decode step |")
    print("|---|---|---|")
    for n in (1, 2, 3, 4, 5, 9):
        ms = pass_ms(n, len(prompt))
        print(f"| {n} | {ms:.0f} | {ms / step:.2f} |")
    draft_step = ModelDraft(draft_model)
    started = time.perf_counter()
    draft_step.propose(prompt, 8, GREEDY, None)
    draft_ms = (time.perf_counter() - started) * 1000 / 8
    context.__exit__(None, None, None)
    print(f"\ndraft model: {draft_ms:.0f} ms per guessed token (target step: {step:.0f} ms)")

    print(
        f"\ntorch threads: {torch.get_num_threads()}\n\n| k | guesses kept (by construction) "
        "| plain tok/s | speculative tok/s | ratio | tokens / pass |"
    )
    print("|---|---|---|---|---|---|")
    for k in ARGS.seven_b_k:
        for accept in (1.0, 0.8, 0.6):
            engine._draft = ModelDraft(draft_model)
            engine._draft_k = k
            engine._draft_spec = "constructed"
            with ConstructedAcceptance(accept, seed=1):
                fast = timed_reply(engine, prompt, tokens)
            per_pass = (fast["tokens"] - 1) / fast["passes"] if fast["passes"] else 0.0
            print(
                f"| {k} | {accept:.0%} | {plain['tps']:.2f} | {fast['tps']:.2f} "
                f"| {fast['tps'] / plain['tps']:.2f}× | {per_pass:.2f} |"
            )


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["a", "c"], choices=["a", "b", "c"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=3, help="tokens drafted per pass")
    parser.add_argument("--prompts", type=int, default=8, help="held-out questions in (a)")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep (c)'s checkpoints")
    parser.add_argument(
        "--seven-b-k", type=int, nargs="+", default=[2, 3, 4], help="tokens drafted per pass in (c)"
    )
    ARGS = parser.parse_args()
    from engine.kernels.tuning import cpu_model

    print(f"CPU: {cpu_model()}; k = {ARGS.k}; greedy; bf16 activations")
    if "a" in ARGS.cases or "b" in ARGS.cases:
        case_builtin(ARGS.tokens)
    if "c" in ARGS.cases:
        case_seven_b(min(ARGS.tokens, 48), ARGS.keep)
    print(json.dumps({"done": True}), file=sys.stderr)


ARGS = argparse.Namespace(k=3, prompts=8, seven_b_k=[2, 3, 4])

if __name__ == "__main__":
    main()
