"""Train Loopchat's built-in model: a small Llama 2 that explains English words, from WordNet.

Reproducible from the repository: `apt-get install wordnet-base` (Debian's WordNet 3.0), an
environment with the test extras (`pip install -e ".[test]"`, for transformers), then

    python scripts/train_builtin.py --out resources/builtin

Steps: build the dialogue corpus (scripts/builtin_corpus.py), train a SentencePiece tokenizer shaped
like Llama 2's (BPE, byte fallback, unk/bos/eos = 0/1/2), encode every dialogue exactly as the
engine encodes a chat (Meta's Llama 2 format, one BOS … EOS per exchange), train a Llama 2 with
transformers' LlamaForCausalLM (the architecture the engine is tested against), and export it in
Hugging Face layout in bfloat16 with its loss curve, held-out perplexity and a unigram baseline.
Everything is seeded; on 2 CPU cores the default run takes about an hour.

A draft model for speculative decoding (a much smaller sibling that proposes tokens for the
built-in to verify) must share the built-in's token ids exactly, so `--draft-of` reuses the
built-in's tokenizer instead of training one (same corpus, same encoding, same held-out split,
so the perplexities compare), and afterwards measures how often the draft's greedy choice is the
built-in's and writes the draft's card:

    python scripts/train_builtin.py --out resources/builtin_draft --draft-of resources/builtin \\
        --dim 96 --layers 2 --heads 2 --kv-heads 1 --hidden 256 --batch 16 --steps 600 --lr 0.004

`--tokenizer PATH` alone reuses a tokenizer without the draft's measurements and card.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import random
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import builtin_corpus  # noqa: E402

log = logging.getLogger("train_builtin")
HELD_OUT_SHIPPED = 200  # held-out dialogues shipped with the model, for the perplexity test
AGREEMENT_PROMPTS = 50  # shipped held-out questions on which a draft is compared with its target
DRAFT_FLAGS = ("tokenizer", "draft_of")

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def train_tokenizer(texts: list[str], out: Path, vocab_size: int, seed: int) -> Path:
    import sentencepiece as spm

    corpus = out / "tokenizer_corpus.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.9999,
        input_sentence_size=400_000,
        shuffle_input_sentence=False,  # deterministic: all lines are used anyway
        seed_sentencepiece_size=1_000_000,
        num_threads=2,
        minloglevel=2,
    )
    corpus.unlink()
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    return out / "tokenizer.model"


def encode_dialogues(tokenizer, pairs: list[tuple[str, str]]) -> list[list[int]]:
    """Each exchange exactly as the engine's chat format encodes a finished turn."""
    from engine.text.chat import B_INST, E_INST

    return [
        tokenizer.encode(f"{B_INST} {q.strip()} {E_INST} {a.strip()} ", bos=True, eos=True)
        for q, a in pairs
    ]


def reuse_tokenizer(source: Path, out: Path, vocab: int) -> Path:
    """Copy an existing SentencePiece model into `out`: the same file gives the same token ids."""
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_file=str(source)).vocab_size()
    if size != vocab:
        raise SystemExit(f"{source} has {size} pieces but --vocab is {vocab}")
    target = out / "tokenizer.model"
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def batches(stream: torch.Tensor, seq_len: int, batch: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=gen)
        rows = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
        yield rows[:, :-1], rows[:, 1:]


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_nll(model, dialogues: list[list[int]], batch: int = 32) -> tuple[float, int]:
    """Total natural-log loss and predicted-token count over whole held-out dialogues.

    Each dialogue starts at its own BOS, as a chat does. Right padding needs no mask: attention
    is causal, so pad positions never influence the real ones, and their loss is ignored.
    """
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(dialogues), batch):
        group = dialogues[i : i + batch]
        width = max(map(len, group))
        x = torch.full((len(group), width), 0, dtype=torch.long)
        y = torch.full((len(group), width), -100, dtype=torch.long)
        for row, ids in enumerate(group):
            x[row, : len(ids)] = torch.tensor(ids)
            y[row, : len(ids) - 1] = torch.tensor(ids[1:])
        logits = model(x).logits.float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).item()
        count += int((y != -100).sum())
    model.train()
    return total, count


def unigram_nll(train: list[list[int]], held: list[list[int]], vocab: int) -> float:
    """Held-out loss per token of an add-one unigram model fitted on the training tokens."""
    counts = Counter(t for ids in train for t in ids[1:])
    total = sum(counts.values()) + vocab
    nll = sum(-math.log((counts[t] + 1) / total) for ids in held for t in ids[1:])
    return nll / sum(len(ids) - 1 for ids in held)


@torch.no_grad()
def greedy_agreement(
    draft, target, tokenizer, questions: list[str], new_tokens: int = 48, blocks=(2, 3, 4, 6)
) -> dict:
    """How often the draft's argmax is the target's, along the target's own greedy replies.

    Each question is encoded as the engine encodes a user turn; the target continues it greedily
    for `new_tokens` tokens (or up to and including EOS), then both models score that sequence
    teacher-forced, so the draft is judged on exactly the prefixes the target produces. Under
    greedy verification this is what speculative decoding accepts, so the matches also give the
    tokens emitted per target pass when the draft proposes k tokens at a time (k accepted at most,
    plus the target's own token at the first mismatch or after the block).
    """
    from engine.text.chat import B_INST, E_INST

    draft.eval()
    target.eval()
    matches: list[list[bool]] = []
    for question in questions:
        prompt = tokenizer.encode(f"{B_INST} {question.strip()} {E_INST}", bos=True)
        ids = list(prompt)
        for _ in range(new_tokens):
            ids.append(int(target(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == 2:  # EOS: the reply is over
                break
        x = torch.tensor([ids[:-1]])
        reply = torch.tensor(ids[len(prompt) :])
        wanted = target(x).logits[0, len(prompt) - 1 :].argmax(-1)
        assert torch.equal(wanted, reply), "the target's teacher-forced argmax is its greedy reply"
        matches.append((draft(x).logits[0, len(prompt) - 1 :].argmax(-1) == reply).tolist())

    def tokens_per_pass(k: int) -> float:
        emitted = passes = 0
        for row in matches:
            i = 0
            while i < len(row):
                accepted = 0
                while accepted < k and i + accepted < len(row) and row[i + accepted]:
                    accepted += 1
                i += accepted + 1
                passes += 1
            emitted += len(row)
        return emitted / passes

    positions = sum(map(len, matches))
    return {
        "prompts": len(questions),
        "max_new_tokens": new_tokens,
        "positions": positions,
        "greedy_agreement": sum(map(sum, matches)) / positions,
        "first_token_agreement": sum(row[0] for row in matches) / len(matches),
        "tokens_per_target_pass": {str(k): tokens_per_pass(k) for k in blocks},
    }


def write_wordlist(pairs: list[tuple[str, str]], path: Path) -> None:
    """Every word of the training text, lower case, gzipped: the tests' dictionary."""
    words = sorted({w.lower() for q, a in pairs for w in re.findall(r"[A-Za-z]+", q + " " + a)})
    path.write_bytes(gzip.compress(("\n".join(words) + "\n").encode("ascii"), mtime=0))


def _draft_command(args: dict) -> str:
    """The command line that trained a draft: its shape and schedule, the rest as defaults."""
    parts = ["python scripts/train_builtin.py", f"--out {args['out']}"]
    parts.append(f"--draft-of {args['draft_of']}")
    flags = ("dim", "layers", "heads", "kv_heads", "hidden", "batch", "steps", "lr", "threads")
    for flag in flags:
        parts.append(f"--{flag.replace('_', '-')} {args[flag]}")
    return " ".join(parts)


def write_draft_card(out: Path, target_dir: Path) -> None:
    """The draft's card.json and README.md, measured on the shipped (bfloat16) weights.

    Perplexity comes from the engine, as for the built-in's card (scripts/builtin_card.py), so the
    two compare; agreement loads both models with transformers in float32.
    """
    import builtin_card
    from transformers import LlamaForCausalLM

    from engine.generation.inspect import held_out_perplexity
    from engine.loading.builtin import held_out_dialogues
    from engine.loading.loader import load_model
    from engine.text.tokenizer import Tokenizer

    torch.manual_seed(0)
    training = json.loads((out / "training.json").read_text())
    report, args = training["report"], training["args"]
    target_report = json.loads((target_dir / "training.json").read_text())["report"]
    target_card = json.loads((target_dir / "card.json").read_text())
    tokenizer = Tokenizer(out / "tokenizer.model")
    questions = [q for q, _ in held_out_dialogues(target_dir)][:AGREEMENT_PROMPTS]
    draft = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    target = LlamaForCausalLM.from_pretrained(target_dir, torch_dtype=torch.float32)
    agreement = greedy_agreement(draft, target, tokenizer, questions)
    target_params = sum(p.numel() for p in target.parameters())
    loaded = load_model(out, dtype="float32", device="cpu")
    ppl = held_out_perplexity(loaded)
    replies = [(q, builtin_card.greedy_reply(loaded, q)) for q in builtin_card.PROMPTS]
    card = {
        "held_out_perplexity": ppl,
        "dtype": "float32",
        "draft_of": target_dir.name,
        "target_held_out_perplexity": target_card["held_out_perplexity"],
        "agreement": agreement,
        "samples": replies,
    }
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")

    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    cfg = draft.config
    per_k = ", ".join(f"{k} → {v:.2f}" for k, v in agreement["tokens_per_target_pass"].items())
    samples = "\n\n".join(f"**User:** {q}\n\n**Model:**\n\n```text\n{a}\n```" for q, a in replies)
    text = f"""# Loopchat built-in draft: a speculative-decoding sibling of `{target_dir.name}`

A much smaller Llama 2 that proposes tokens for the built-in model (`{target_dir.name}`) to verify
in speculative decoding, so the offline app can demonstrate it. It is not meant to chat on its own.
It shares the built-in's tokenizer file byte for byte (`tokenizer.model` is a copy: every token id
is the same) and its chat format, and was trained by the same script on the same corpus, the same
encoding of dialogues and the same held-out split, so the numbers below compare directly.
Size: {report["parameters"] / 1e6:.2f} M parameters ({size_mb:.1f} MB in bfloat16), against the
built-in's {target_params / 1e6:.2f} M.

## Architecture
Llama 2 in Hugging Face layout (`config.json`): {cfg.num_hidden_layers} layers, dimension
{cfg.hidden_size}, {cfg.num_attention_heads} attention heads sharing {cfg.num_key_value_heads}
key/value head(s), SwiGLU hidden size {cfg.intermediate_size}, vocabulary {cfg.vocab_size}, context
{cfg.max_position_embeddings} (as the built-in's). Tokenizer: the built-in's SentencePiece BPE.

## Training data
[WordNet 3.0](https://wordnet.princeton.edu/) © 1996–2012 Princeton University, under the
WordNet 3.0 licence (permission to use, copy, modify and distribute, with the copyright notice;
see `LICENSE-WordNet`), taken from Debian's `wordnet-base` package (1:3.0), turned into dialogues
by `scripts/builtin_corpus.py` exactly as for the built-in: {report["training_tokens_in_corpus"]:,}
training tokens; training drew {report["training_tokens_seen"]:,} token positions from them at
random ({report["train_seconds"] / 60:.0f} minutes on {report["threads"]} busy CPU thread(s), bf16
autocast, seed {report["seed"]}):

```sh
{_draft_command(args)}
```

## Quality
- Held-out perplexity (per token, engine, float32, {report["shipped_held_out_dialogues"]} shipped
  dialogues, the built-in's `held_out.jsonl`): **{ppl:.2f}**, against the built-in's
  {target_card["held_out_perplexity"]:.2f}. Over all {report["held_out_dialogues"]:,} held-out
  dialogues at the end of training: {report["held_out_perplexity"]:.2f} (built-in
  {target_report["held_out_perplexity"]:.2f}); unigram model: {report["unigram_perplexity"]:.0f}.
- Greedy agreement with the built-in: on the first {agreement["prompts"]} shipped held-out
  questions, the built-in replied greedily (up to {agreement["max_new_tokens"]} tokens, or to its
  end of reply; {agreement["positions"]:,} positions), and both models then scored those replies
  teacher-forced in float32 (transformers). The draft's argmax equals the built-in's at
  **{agreement["greedy_agreement"]:.1%}** of positions ({agreement["first_token_agreement"]:.0%} of
  first reply tokens).
- What that means for greedy speculative decoding: tokens emitted per pass of the built-in when
  the draft proposes k tokens at a time (k → tokens): {per_k}. Without a draft: 1.
- Loss curve: `training.json` (`curve`).

## Sample replies of the draft alone (greedy, unedited)

{samples}
"""
    (out / "README.md").write_text(text, encoding="utf-8")
    log.info("draft card: perplexity %.3f, agreement %s", ppl, agreement)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("resources/builtin"))
    parser.add_argument("--wordnet", type=Path, default=builtin_corpus.WORDNET_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from",
        type=Path,
        help="continue training this exported model (its tokenizer and weights) for --steps more, "
        "with a fresh warm-up and cosine schedule; --data-seed picks other batches",
    )
    parser.add_argument("--data-seed", type=int, default=None, help="batch order (default: seed)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="reuse this tokenizer.model (copied to --out) instead of training one: identical ids",
    )
    parser.add_argument(
        "--draft-of",
        type=Path,
        help="train a draft of this exported model for speculative decoding: its tokenizer (unless "
        "--tokenizer), its licence file; then measure greedy agreement with it and write a card",
    )
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=100)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(ns.seed)
    torch.set_num_threads(ns.threads)
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.draft_of and not ns.tokenizer:
        ns.tokenizer = ns.draft_of / "tokenizer.model"
    # Recorded as run; the new flags only when used, so the default run's record is unchanged.
    args = {k: v for k, v in vars(ns).items() if v is not None or k not in DRAFT_FLAGS}
    args["out"] = str(ns.out)

    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.text.tokenizer import Tokenizer

    train_pairs, held_pairs = builtin_corpus.build(ns.wordnet, ns.seed)
    log.info("corpus: %d training dialogues, %d held out", len(train_pairs), len(held_pairs))
    if ns.draft_of:  # the target's dictionary and licence: the text is the same WordNet
        licence = ns.draft_of / "LICENSE-WordNet"
        if licence.is_file() and licence.resolve() != (ns.out / licence.name).resolve():
            shutil.copyfile(licence, ns.out / licence.name)
    else:
        write_wordlist(train_pairs, ns.out / "words.txt.gz")
    texts = [f"[INST] {q} [/INST] {a}" for q, a in train_pairs]
    earlier: dict = {}
    if ns.init_from:
        earlier = json.loads((ns.init_from / "training.json").read_text())
        if ns.init_from.resolve() != ns.out.resolve():
            shutil.copyfile(ns.init_from / "tokenizer.model", ns.out / "tokenizer.model")
        tokenizer = Tokenizer(ns.out / "tokenizer.model")
    elif ns.tokenizer:
        tokenizer = Tokenizer(reuse_tokenizer(ns.tokenizer, ns.out, ns.vocab))
    else:
        tokenizer = Tokenizer(train_tokenizer(texts, ns.out, ns.vocab, ns.seed))
    train_ids = encode_dialogues(tokenizer, train_pairs)
    held_ids = encode_dialogues(tokenizer, held_pairs)
    stream = torch.tensor([t for ids in train_ids for t in ids], dtype=torch.long)
    log.info("training tokens: %d; held-out tokens: %d", stream.numel(), sum(map(len, held_ids)))

    config = LlamaConfig(
        vocab_size=ns.vocab,
        hidden_size=ns.dim,
        intermediate_size=ns.hidden,
        num_hidden_layers=ns.layers,
        num_attention_heads=ns.heads,
        num_key_value_heads=ns.kv_heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    if ns.init_from:
        model = LlamaForCausalLM.from_pretrained(ns.init_from, torch_dtype=torch.float32)
        config = model.config
    else:
        model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2f M parameters", n_params / 1e6)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=ns.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(ns.seed if ns.data_seed is None else ns.data_seed)
    shipped = sorted(random.Random(ns.seed).sample(range(len(held_ids)), HELD_OUT_SHIPPED))
    eval_set = [held_ids[i] for i in shipped]
    curve = list(earlier.get("curve", []))
    first_step = curve[-1]["step"] if curve else 0
    started = time.perf_counter()
    data = batches(stream, ns.seq_len, ns.batch, gen)
    for step in range(ns.steps):
        for group in optim.param_groups:
            group["lr"] = lr_at(step, ns.steps, ns.lr, warmup=100)
        x, y = next(data)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # oneDNN bf16 matmuls, fp32 master
            logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, ns.vocab), y.reshape(-1)
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        point = {"step": first_step + step + 1, "train_loss": round(loss.item(), 4)}
        if (step + 1) % ns.eval_every == 0 or step + 1 == ns.steps:
            total, count = held_out_nll(model, eval_set)
            point["held_out_loss"] = round(total / count, 4)
            elapsed = time.perf_counter() - started
            log.info(
                "step %d loss %.3f held-out %.3f (%.0f tok/s, %.0f s)",
                step + 1,
                loss.item(),
                total / count,
                (step + 1) * ns.batch * ns.seq_len / elapsed,
                elapsed,
            )
        curve.append(point)
        if (step + 1) % 25 == 0:
            log.info("step %d loss %.3f", step + 1, loss.item())

    total, count = held_out_nll(model, held_ids)
    model.to(torch.bfloat16)  # what is shipped is what is measured
    shipped_total, shipped_count = held_out_nll(model, eval_set)
    report = {
        "seed": ns.seed,
        "parameters": n_params,
        "training_tokens_seen": ns.steps * ns.batch * ns.seq_len
        + earlier.get("report", {}).get("training_tokens_seen", 0),
        "training_tokens_in_corpus": stream.numel(),
        "train_seconds": round(time.perf_counter() - started, 1)
        + earlier.get("report", {}).get("train_seconds", 0),
        "threads": ns.threads,
        "held_out_dialogues": len(held_ids),
        "held_out_tokens": count,
        "held_out_loss": total / count,
        "held_out_perplexity": math.exp(total / count),
        "unigram_perplexity": math.exp(unigram_nll(train_ids, held_ids, ns.vocab)),
        "shipped_held_out_dialogues": len(eval_set),
        "shipped_held_out_perplexity_bf16": math.exp(shipped_total / shipped_count),
    }
    log.info("final: %s", report)
    model.save_pretrained(ns.out, safe_serialization=True)
    held_out_file = ns.out / "held_out.jsonl"
    held_out_file.write_text(
        "".join(
            json.dumps({"user": held_pairs[i][0], "assistant": held_pairs[i][1]}) + "\n"
            for i in shipped
        ),
        encoding="utf-8",
    )
    (ns.out / "generation_config.json").unlink(missing_ok=True)
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }
    (ns.out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (ns.out / "training.json").write_text(
        json.dumps(
            {
                "report": report,
                "stages": earlier.get("stages", [earlier.get("args")] if earlier else []) + [args],
                "args": args,
                "curve": curve,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    if ns.draft_of:
        write_draft_card(ns.out, ns.draft_of)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
