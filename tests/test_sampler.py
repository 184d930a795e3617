"""Sampling: greedy, filters, penalty, seeds, and the probabilities reported with each choice."""

from __future__ import annotations

import pytest
import torch

from engine.errors import EngineError
from engine.generation.sampler import Sampler
from engine.generation.sampling import SamplingParams

OFF = dict(top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def logits(seed: int = 0, vocab: int = 200) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_reports_model_probabilities() -> None:
    x = logits()
    result = Sampler(SamplingParams(temperature=0, **OFF)).sample(x, [], report_top=5)
    probs = torch.softmax(x, -1)
    assert result.token_id == int(x.argmax())
    assert result.prob == pytest.approx(float(probs.max()))
    assert result.top_ids == torch.topk(probs, 5).indices.tolist()
    assert result.top_probs == pytest.approx(torch.topk(probs, 5).values.tolist())
    assert sum(result.top_probs) <= 1.0


def test_reported_probabilities_ignore_temperature_and_penalty() -> None:
    x = logits(1)
    hot = Sampler(
        SamplingParams(temperature=5.0, repetition_penalty=2.0, top_k=0, top_p=1.0, min_p=0, seed=1)
    ).sample(x, [0, 1, 2], report_top=3)
    assert hot.top_probs == pytest.approx(torch.topk(torch.softmax(x, -1), 3).values.tolist())
    assert hot.prob == pytest.approx(float(torch.softmax(x, -1)[hot.token_id]))


def test_top_k_top_p_min_p_restrict_the_choice() -> None:
    x = logits(2)
    probs = torch.softmax(x, -1)
    order = torch.argsort(probs, descending=True).tolist()
    cases = [
        (dict(top_k=3, top_p=1.0, min_p=0.0), set(order[:3])),
        (dict(top_k=0, top_p=0.5, min_p=0.0), None),
        (dict(top_k=0, top_p=1.0, min_p=0.3), {i for i in order if probs[i] >= 0.3 * probs.max()}),
    ]
    cumulative = torch.cumsum(probs[order], 0)
    nucleus = set(order[: int((cumulative < 0.5).sum()) + 1])
    for filters, allowed in cases:
        allowed = allowed or nucleus
        sampler = Sampler(
            SamplingParams(temperature=1.0, repetition_penalty=1.0, seed=5, **filters)
        )
        chosen = {sampler.sample(x, []).token_id for _ in range(300)}
        assert chosen <= allowed
        assert len(chosen) > 1 or len(allowed) == 1


def test_repetition_penalty_changes_the_choice() -> None:
    x = torch.tensor([0.0, 2.0, 1.9, -1.0])
    greedy = SamplingParams(temperature=0, **{**OFF, "repetition_penalty": 1.0})
    assert Sampler(greedy).sample(x, [1]).token_id == 1
    penalised = SamplingParams(temperature=0, **{**OFF, "repetition_penalty": 1.3})
    assert Sampler(penalised).sample(x, [1]).token_id == 2
    # A negative logit is pushed further down, not up.
    y = torch.tensor([-1.0, -1.1, -5.0])
    assert Sampler(penalised).sample(y, [0]).token_id == 1


def test_same_seed_same_tokens_different_seed_differs() -> None:
    x = logits(3)

    def run(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed, **OFF))
        return [sampler.sample(x, []).token_id for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_temperature_one_matches_the_distribution() -> None:
    x = torch.tensor([2.0, 1.0, 0.0, -1.0])
    probs = torch.softmax(x, -1)
    sampler = Sampler(SamplingParams(temperature=1.0, seed=11, **OFF))
    n = 4000
    counts = torch.bincount(
        torch.tensor([sampler.sample(x, []).token_id for _ in range(n)]), minlength=4
    )
    expected = probs * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # p = 0.001 for 3 degrees of freedom


def test_low_temperature_sharpens() -> None:
    x = torch.tensor([1.0, 0.8, 0.0])
    cold = Sampler(SamplingParams(temperature=0.02, seed=1, **OFF))
    assert {cold.sample(x, []).token_id for _ in range(100)} == {0}


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_k=-2),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(min_p=1.0),
        dict(repetition_penalty=0),
    ],
)
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(EngineError):
        Sampler(SamplingParams(**bad))
