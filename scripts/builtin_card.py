"""Write the built-in model's card: held-out perplexity measured by the engine, and sample replies.

Run after scripts/train_builtin.py:

    python scripts/builtin_card.py resources/builtin

The numbers come from the engine itself (the same loader and chat format the app uses), so the
card states what a user gets; tests/test_builtin.py checks the perplexity against card.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generation.generate import Generator  # noqa: E402
from engine.generation.inspect import held_out_perplexity  # noqa: E402
from engine.generation.sampling import SamplingParams  # noqa: E402
from engine.loading.loader import load_model  # noqa: E402
from engine.text.chat import Message, chat_prompt_ids  # noqa: E402

PROMPTS = [
    'What does "ephemeral" mean?',
    "Define photosynthesis.",
    'Use "reluctant" in a sentence.',
    'What is the opposite of "generous"?',
    'What is another word for "happy"?',
]


def greedy_reply(loaded, question: str, max_new_tokens: int = 160) -> str:
    ids = chat_prompt_ids(loaded.tokenizer, [Message("user", question)], loaded.chat_template)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0)
    generation = Generator(loaded).generate(ids, params, max_new_tokens=max_new_tokens)
    return "".join(step.text for step in generation).strip()


def _command(stage: dict) -> str:
    """The command line that ran one training stage (defaults left out)."""
    parts = ["python scripts/train_builtin.py", "--out resources/builtin"]
    if stage.get("init_from"):
        parts.append("--init-from resources/builtin")
    for flag in ("steps", "lr", "data_seed"):
        if stage.get(flag) is not None:
            parts.append(f"--{flag.replace('_', '-')} {stage[flag]}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    ns = parser.parse_args(argv)
    torch.manual_seed(0)
    loaded = load_model(ns.folder, dtype="float32", device="cpu")
    training = json.loads((ns.folder / "training.json").read_text())["report"]
    ppl = held_out_perplexity(loaded)
    replies = [(q, greedy_reply(loaded, q)) for q in PROMPTS]
    card = {"held_out_perplexity": ppl, "dtype": "float32", "samples": replies}
    (ns.folder / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")

    size_mb = (ns.folder / "model.safetensors").stat().st_size / 1e6
    samples = "\n\n".join(f"**User:** {q}\n\n**Model:**\n\n```text\n{a}\n```" for q, a in replies)
    corpus_tokens = training["training_tokens_in_corpus"]
    seen = training["training_tokens_seen"]
    minutes = training["train_seconds"] / 60
    threads = training["threads"]
    shipped = training["shipped_held_out_dialogues"]
    stages = json.loads((ns.folder / "training.json").read_text()).get("stages") or []
    commands = "\n".join(_command(stage) for stage in stages)
    text = f"""# Loopchat built-in model: a small dictionary assistant

A Llama 2 model trained from scratch by the Loopchat project with `scripts/train_builtin.py`
(seed {training["seed"]}), so the app can chat offline the moment it is installed. It explains
English words in Llama 2's chat format. It is small ({training["parameters"] / 1e6:.1f} M
parameters, {size_mb:.1f} MB in bfloat16): expect dictionary-style answers, often wrong for rare
words, and nothing outside its domain.

## Architecture
Llama 2 (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention) in Hugging Face layout,
loaded by the same engine as any other model. See `config.json`; tokenizer: SentencePiece BPE,
{loaded.tokenizer.vocab_size} pieces, byte fallback, unk/bos/eos = 0/1/2.

## Training data
[WordNet 3.0](https://wordnet.princeton.edu/) © 1996–2012 Princeton University, under the
WordNet 3.0 licence (permission to use, copy, modify and distribute, with the copyright notice;
see `LICENSE-WordNet`), taken from Debian's `wordnet-base` package (1:3.0). Each lemma becomes one
or more dialogues (meaning with its first {3} senses and an example; an example sentence;
similar and opposite words), built by `scripts/builtin_corpus.py`:
{corpus_tokens:,} training tokens; training drew {seen:,} token positions from them at random
({minutes:.0f} minutes on {threads} busy CPU threads, bf16 autocast), in {len(stages)} stage(s):

```sh
{commands}
```
 About 1% of the lemmas (chosen by a hash of the word) are
held out; {shipped} of their dialogues ship in `held_out.jsonl`.

## Quality
- Held-out perplexity (per token, engine, float32, {training["shipped_held_out_dialogues"]}
  shipped dialogues): **{ppl:.2f}**; a unigram model fitted on the training tokens:
  {training["unigram_perplexity"]:.0f}. Over all {training["held_out_dialogues"]:,} held-out
  dialogues at the end of training: {training["held_out_perplexity"]:.2f}.
- Loss curve: `training.json` (`curve`).

## Sample replies (greedy, unedited)

{samples}
"""
    (ns.folder / "README.md").write_text(text, encoding="utf-8")
    print(f"held-out perplexity {ppl:.3f} (exp of {math.log(ppl):.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
