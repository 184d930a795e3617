"""Choose the next token, and report the model's own probabilities alongside the choice.

The reported numbers (`prob`, `top_*`) are softmax(logits) at temperature 1, before any penalty or
filter: they describe what the model thinks, which is what the top-k panel is for. The choice itself
applies repetition penalty, temperature, top-k, top-p and min-p, in that order (the order llama.cpp
and transformers use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.events import SamplingParams

__all__ = ["SampleResult", "Sampler", "SamplingParams"]


@dataclass(frozen=True)
class SampleResult:
    """The chosen token with the model's probability for it, and the model's top candidates."""

    token_id: int
    prob: float
    top_ids: list[int]
    top_probs: list[float]


class Sampler:
    """Samples with its own seeded generator, so one seed reproduces one reply exactly."""

    def __init__(self, params: SamplingParams) -> None:
        params.validate()
        self.params = params
        self._generator: torch.Generator | None = None
        if params.seed is not None:
            self._generator = torch.Generator(device="cpu")
            self._generator.manual_seed(int(params.seed))

    def sample(
        self, logits: torch.Tensor, history: Sequence[int], report_top: int = 10
    ) -> SampleResult:
        """Pick the next token from float32 logits [vocab]; `history` feeds the penalty."""
        logits = logits.float().cpu()
        probs = torch.softmax(logits, dim=-1)
        token = self._choose(logits, history)
        k = min(report_top, probs.shape[-1])
        top_probs, top_ids = torch.topk(probs, k) if k else (probs[:0], probs[:0].long())
        # One conversion to Python for everything the caller reports.
        chosen = float(probs[token])
        return SampleResult(token, chosen, top_ids.tolist(), top_probs.tolist())

    def _choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        p = self.params
        if p.repetition_penalty != 1.0 and history:
            # Only ids the logits cover: a prompt may hold ids of padded rows past the tokenizer.
            covered = sorted(t for t in set(history) if 0 <= t < len(logits))
            seen = torch.tensor(covered, dtype=torch.long)
            picked = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(
                picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty
            )
        if p.greedy:
            return int(torch.argmax(logits))

        scaled = logits / p.temperature
        if p.top_k and p.top_k < scaled.shape[-1]:
            values, ids = torch.topk(scaled, p.top_k)  # sorted descending
        else:
            values, ids = torch.sort(scaled, descending=True)
        probs = torch.softmax(values, dim=-1)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if p.top_p < 1.0:
            # Keep a token if the mass before it is still below p (always keeps the first).
            before = torch.cumsum(probs, dim=-1) - probs
            keep &= before < p.top_p
        if p.min_p > 0.0:
            keep &= probs >= p.min_p * probs[0]
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        choice = torch.multinomial(probs / probs.sum(), 1, generator=self._generator)
        return int(ids[choice])
