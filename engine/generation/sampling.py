"""Choose the next token, and report the model's own probabilities alongside the choice.

The reported numbers (`prob`, `top_*`) are softmax(logits) at temperature 1, before any penalty or
filter: they describe what the model thinks, which is what the top-k panel is for. The choice itself
applies repetition penalty, temperature, top-k, top-p and min-p, in that order (the order llama.cpp
and transformers use), then one uniform draw on the cumulative distribution that is left.

Each of those is one function below, and `choose_token` is the only place that chains them. The
sampler calls it without an observer; step mode's explanation (`engine.generation.sampler_stages`)
calls it
with one, so the token it explains is, by construction, the token generation picks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.events import SamplingParams

__all__ = [
    "SampleResult",
    "SamplingParams",
    "StageObserver",
    "choose_token",
    "final_distribution",
    "reported",
]

StageObserver = Callable[..., None]
"""Called as `observe(stage, **tensors)` after each stage of `choose_token` (see there)."""


@dataclass(frozen=True)
class SampleResult:
    """The chosen token with the model's probability for it, and the model's top candidates."""

    token_id: int
    prob: float
    top_ids: list[int]
    top_probs: list[float]


# -- the stages, in the order `choose_token` applies them ---------------------------------------


def penalize(logits: torch.Tensor, history: Sequence[int], penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty: logits of tokens already seen move towards "unlikely"
    (a positive logit is divided by `penalty`, a negative one multiplied). 1 = unchanged."""
    if penalty == 1.0 or not history:
        return logits
    # Only ids the logits cover: a prompt may hold ids of padded rows past the tokenizer.
    covered = sorted(t for t in set(history) if 0 <= t < len(logits))
    if not covered:
        return logits
    seen = torch.tensor(covered, dtype=torch.long)
    picked = logits[seen]
    out = logits.clone()
    out[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def keep_top_k(scaled: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates, most likely first: (ids, probabilities renormalised over them).

    With `top_k` 0 (off) or at least the vocabulary, every token stays, sorted.
    """
    if top_k and top_k < scaled.shape[-1]:
        values, ids = torch.topk(scaled, top_k)  # sorted descending
    else:
        values, ids = torch.sort(scaled, descending=True)
    return ids, torch.softmax(values, dim=-1)


def drop(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero the dropped candidates (the first is always kept). Not rescaled: `draw` scales by
    what is left, and step mode's account renormalises what it shows."""
    return torch.where(keep, probs, torch.zeros_like(probs))


def keep_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus: keep a candidate while the mass before it is still below p (keeps the first).

    `probs` is sorted descending and sums to 1 (top-k's softmax); 1 = off.
    """
    if top_p >= 1.0:
        return probs
    before = torch.cumsum(probs, dim=-1) - probs
    return drop(probs, before < top_p)


def keep_min_p(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop candidates less likely than min_p × the most likely one (sorted descending); 0 = off.

    The ratio to the first is the same whether or not `probs` sums to 1, so min-p after top-p
    keeps the tokens it would keep on its own.
    """
    if min_p <= 0.0:
        return probs
    return drop(probs, probs >= min_p * probs[0])


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> tuple[int, float]:
    """One uniform number u in [0, 1) placed on the cumulative distribution: (index, u).

    `probs` need not sum to 1 (filters zero what they drop): u is scaled by their total.

    The index is the candidate whose span [cdf before, cdf) holds u, so a zero-probability
    candidate (a zero-width span) is never picked. Shown as is in step mode: where the draw landed.
    """
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    cdf = torch.cumsum(probs.double(), dim=-1)
    index = int(torch.searchsorted(cdf, u * float(cdf[-1]), right=True))
    return min(index, len(probs) - 1), u


def choose_token(
    logits: torch.Tensor,
    history: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator | None,
    observe: StageObserver | None = None,
) -> int:
    """The one sampling path: penalty, temperature (0 = greedy), top-k, top-p, min-p, draw.

    `observe`, when given, sees each stage's result and may not change it:
    `observe("penalty", logits=...)`, then for greedy `observe("greedy", token=...)`, else
    `observe("temperature", scaled=...)`, `observe("top_k", ids=..., probs=...)`,
    `observe("top_p", probs=...)`, `observe("min_p", probs=...)`,
    `observe("draw", ids=..., probs=..., index=..., u=...)`.
    """
    p = params
    logits = penalize(logits, history, p.repetition_penalty)
    if observe is not None:
        observe("penalty", logits=logits)
    if p.greedy:
        token = int(torch.argmax(logits))
        if observe is not None:
            observe("greedy", token=token)
        return token
    scaled = logits / p.temperature
    if observe is not None:
        observe("temperature", scaled=scaled)
    ids, probs = keep_top_k(scaled, p.top_k)
    if observe is not None:
        observe("top_k", ids=ids, probs=probs)
    probs = keep_top_p(probs, p.top_p)
    if observe is not None:
        observe("top_p", probs=probs)
    probs = keep_min_p(probs, p.min_p)
    if observe is not None:
        observe("min_p", probs=probs)
    index, u = draw(probs, generator)
    if observe is not None:
        observe("draw", ids=ids, probs=probs, index=index, u=u)
    return int(ids[index])


def final_distribution(
    logits: torch.Tensor, history: Sequence[int], params: SamplingParams
) -> torch.Tensor:
    """The distribution `choose_token` draws from, over the whole vocabulary (float64, sums to 1).

    Speculative decoding compares the target's and the draft's distributions token by token;
    built from the same stages in the same order, its acceptance rule then leaves exactly the
    distribution that plain sampling draws from. Greedy is the point mass on the argmax.
    """
    p = params
    logits = penalize(logits.float(), history, p.repetition_penalty)
    out = torch.zeros(logits.shape[-1], dtype=torch.float64)
    if p.greedy:
        out[int(torch.argmax(logits))] = 1.0
        return out
    ids, probs = keep_top_k(logits / p.temperature, p.top_k)
    probs = keep_min_p(keep_top_p(probs, p.top_p), p.min_p).double()
    out[ids] = probs / probs.sum()
    return out


def reported(logits: torch.Tensor, token: int, report_top: int) -> SampleResult:
    """`token` with the model's own numbers (softmax of float32 CPU `logits` at temperature 1):
    its probability and the `report_top` most likely candidates, whoever chose it (the sampler,
    or a branch that forces it). A token past the logits (a padded row) gets probability 0."""
    probs = torch.softmax(logits, dim=-1)
    k = min(report_top, probs.shape[-1])
    top_probs, top_ids = torch.topk(probs, k) if k else (probs[:0], probs[:0].long())
    # One conversion to Python for everything the caller reports.
    chosen = float(probs[token]) if token < probs.shape[-1] else 0.0
    return SampleResult(token, chosen, top_ids.tolist(), top_probs.tolist())
