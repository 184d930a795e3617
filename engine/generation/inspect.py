"""Look inside one forward pass: how surprising each token was, how unsure the model was after it,
and what the last position attended to.

One function, `inspect_tokens`, serves the CLI's `inspect` command and the desktop's surprisal tint
and attention view, so both show the same numbers. The prompt is prefilled in chunks and each
chunk's logits are reduced at once to a few numbers per position, so a long prompt never holds a
[T, vocab] tensor. The attention weights are loop attention's own capture (the weights that
produced the output), switched on only for the chunk holding the last position.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

import torch

from engine.errors import EngineError
from engine.events import Inspection
from engine.loading.builtin import held_out_dialogues
from engine.loading.loader import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 64
"""Prompt positions per forward pass: the chunk's logits are [chunk, vocab], never [T, vocab]."""


def outside_vocabulary(loaded: LoadedModel, ids: Sequence[int]) -> int | None:
    """The first id the model has no embedding row for, or None if it can run them all.

    Checked before any forward pass or tokenizer lookup: ids saved with another model (a larger
    vocabulary) would otherwise fail deep inside as an IndexError.
    """
    vocab = loaded.args.vocab_size
    return next((int(t) for t in ids if not 0 <= int(t) < vocab), None)


def check_ids(loaded: LoadedModel, ids: Sequence[int]) -> list[int]:
    """The ids as ints, refused with a message fit for the user if the model cannot run them."""
    tokens = [int(t) for t in ids]
    vocab = loaded.args.vocab_size
    if not tokens:
        raise EngineError("the prompt is empty: give at least one token")
    bad = outside_vocabulary(loaded, tokens)
    if bad is not None:
        raise EngineError(f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})")
    if len(tokens) > loaded.max_context:
        raise EngineError(
            f"the prompt is {len(tokens)} tokens but the model's context holds "
            f"{loaded.max_context}; shorten it"
        )
    return tokens


@torch.inference_mode()
def inspect_tokens(
    loaded: LoadedModel,
    ids: Sequence[int],
    *,
    attention: bool = True,
    top: int = 0,
    chunk: int = DEFAULT_CHUNK,
    cancel: threading.Event | None = None,
) -> Inspection:
    """Prefill `ids` from position 0 and report logprobs, entropy and (optionally) attention.

    Overwrites the model's KV cache from position 0: a `Generator` sharing the model must
    `forget_cache()` afterwards. Raises EngineError on bad ids, NaN/Inf logits or a cancel.
    """
    tokens = check_ids(loaded, ids)
    if chunk < 1:
        raise EngineError("inspect chunk must be at least 1 token")
    model = loaded.model
    tokenizer = loaded.tokenizer
    # The distribution is the model's own, over every row of its output (as transformers reports
    # it); only the alternatives listed are limited to rows the tokenizer can name (checkpoints may
    # pad the vocabulary past the tokenizer's).
    speakable = min(tokenizer.vocab_size, loaded.args.vocab_size)
    n = len(tokens)
    logprobs: list[float | None] = [None]
    entropy: list[float] = []
    ranks: list[int | None] = [None] if top else []
    top_ids: list[list[int]] = [[]] if top else []
    top_probs: list[list[float]] = [[]] if top else []
    weights: list[list[list[float]]] = []
    was_capturing = model.capture_attention
    try:
        for start in range(0, n, chunk):
            if cancel is not None and cancel.is_set():
                raise EngineError("inspection cancelled")
            piece = tokens[start : start + chunk]
            last_chunk = start + len(piece) == n
            model.capture_attention = attention and last_chunk
            batch = torch.tensor(piece, dtype=torch.long, device=loaded.device)
            logits = model(batch, start).float()  # [C, vocab]
            if not bool(torch.isfinite(logits).all()):
                raise EngineError(
                    "the model produced invalid numbers (NaN/Inf) while reading the prompt; "
                    "try float32"
                )
            # Reduced in float64: a float32 sum over 32000 entries drifts by ~1e-4 nats.
            logp = torch.log_softmax(logits.double(), dim=-1)  # [C, vocab]
            entropy += (-(logp.exp() * logp).sum(dim=-1)).tolist()
            # Row j predicts token start + j + 1; the last row of the last chunk predicts nothing.
            following = tokens[start + 1 : start + len(piece) + 1]
            if following:
                rows = logp[: len(following)]  # [F, vocab]
                nxt = torch.tensor(following, device=logits.device)[:, None]  # [F, 1]
                chosen = rows.gather(1, nxt)  # [F, 1]
                logprobs += chosen[:, 0].tolist()
                if top:
                    ranks += ((rows > chosen).sum(dim=-1) + 1).tolist()
                    best, best_ids = rows[:, :speakable].topk(min(top, speakable), dim=-1)
                    top_ids += best_ids.tolist()
                    top_probs += best.exp().tolist()
            if attention and last_chunk:
                # [n_heads, n] per layer, captured by loop attention for the last query.
                weights = [w.float().tolist() for w in model.last_attention]
    finally:
        model.capture_attention = was_capturing
        model.last_attention = []
    log.debug("inspected %d tokens", n)
    return Inspection(
        token_ids=tokens,
        pieces=[tokenizer.piece(t) if t < tokenizer.vocab_size else f"<{t}>" for t in tokens],
        logprobs=logprobs,
        entropy=entropy,
        attention=weights,
        ranks=ranks,
        top_ids=top_ids,
        top_probs=top_probs,
    )


def held_out_perplexity(loaded: LoadedModel) -> float:
    """Per-token perplexity of the shipped held-out dialogues, each from its own BOS.

    Each dialogue is encoded as a finished chat turn, exactly as the model was trained, and run
    through the engine from position 0 (the KV cache is overwritten, so the caller's generator
    must forget its cache afterwards).
    """
    from engine.text.chat import B_INST, E_INST

    total, count = 0.0, 0
    for question, answer in held_out_dialogues(loaded.path):
        ids = loaded.tokenizer.encode(
            f"{B_INST} {question.strip()} {E_INST} {answer.strip()} ", bos=True, eos=True
        )
        if len(ids) > loaded.max_context:
            continue
        with torch.inference_mode():
            logits = loaded.model(torch.tensor(ids, device=loaded.device), 0)  # [T, vocab]
        targets = torch.tensor(ids[1:], device=logits.device)
        nll = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="sum")
        total += float(nll)
        count += len(ids) - 1
    return math.exp(total / count)
