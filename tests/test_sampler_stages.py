"""Step mode's sampler account: the same choice as the sampler, stage by stage, summing to 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.events import GREEDY, SamplingParams
from engine.generation.generate import Generator
from engine.generation.sampler import Sampler
from engine.generation.sampler_stages import explain_choice
from engine.loading.loader import load_model

CASES = [
    GREEDY,
    SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.3),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3),
    SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, seed=4),
    SamplingParams(temperature=1.6, top_k=12, top_p=0.6, min_p=0.0, repetition_penalty=1.2, seed=5),
    SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.2, seed=6),
]


def logits(seed: int, vocab: int = 300) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("params", CASES)
def test_explained_pick_is_the_samplers_pick(params: SamplingParams) -> None:
    """Forty picks in a row with a growing history: explaining changes no choice."""
    plain, explaining = Sampler(params), Sampler(params)
    explaining.explain = True
    history: list[int] = [1, 2, 3]
    for i in range(40):
        x = logits(100 + i)
        a = plain.sample(x, history)
        b = explaining.sample(x, history)
        assert a == b
        assert explaining.last_stages.token_id == b.token_id
        history.append(a.token_id)


@pytest.mark.parametrize("params", CASES)
def test_each_stage_sums_to_one_and_filters_shrink(params: SamplingParams) -> None:
    generator = None
    if params.seed is not None:
        generator = torch.Generator().manual_seed(params.seed)
    x = logits(7)
    found = explain_choice(x, [5, 9], params, generator, names=lambda t: f"<{t}>")
    keys = [s.key for s in found.stages]
    assert keys == ["model", "penalty", "temperature", "top_k", "top_p", "min_p"]
    for stage in found.stages:
        shown = sum(r.prob for r in stage.rows)
        assert shown + stage.rest == pytest.approx(1.0, abs=1e-5), stage.key
        probs = [r.prob for r in stage.rows]
        assert probs == sorted(probs, reverse=True)
        assert all(r.text == f"<{r.token_id}>" for r in stage.rows)
    model = found.stages[0]
    assert model.survivors == 300
    assert [r.prob for r in model.rows] == pytest.approx(
        torch.topk(torch.softmax(x, -1), len(model.rows)).values.tolist()
    )
    survivors = [s.survivors for s in found.stages]
    assert survivors == sorted(survivors, reverse=True)  # no stage brings a token back
    if found.greedy:
        assert found.draw is None and found.pick_prob == 1.0
        assert survivors[2:] == [1, 1, 1, 1]
        return
    if params.top_k:
        assert found.stages[3].survivors == params.top_k
    last = found.stages[-1]
    assert found.token_id in [r.token_id for r in last.rows] or last.survivors > len(last.rows)
    start, end = found.span
    assert start <= found.draw < end  # the draw landed on the picked token's span
    assert end - start == pytest.approx(found.pick_prob)


def test_top_p_and_min_p_survivors_follow_their_rules() -> None:
    x = torch.tensor([3.0, 2.5, 2.0, 0.0, -1.0, -3.0])
    params = SamplingParams(temperature=1.0, top_k=0, top_p=0.8, min_p=0.3, seed=1)
    found = explain_choice(x, [], params, torch.Generator().manual_seed(1))
    p = torch.softmax(x, -1)
    before = torch.cumsum(p, -1) - p
    nucleus = int((before < 0.8).sum())
    assert found.stages[4].survivors == nucleus
    kept = p[:nucleus] / p[:nucleus].sum()
    assert found.stages[5].survivors == int((kept >= 0.3 * kept[0]).sum())
    assert [r.prob for r in found.stages[5].rows] == pytest.approx(
        (kept[kept >= 0.3 * kept[0]] / kept[kept >= 0.3 * kept[0]].sum()).tolist()
    )


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(tiny_model_dir, dtype="float32", device="cpu")


@pytest.mark.parametrize(
    "params", [GREEDY, SamplingParams(temperature=1.1, top_k=30, top_p=0.9, min_p=0.02, seed=9)]
)
def test_stepping_a_paused_generation_equals_generating(loaded, params) -> None:
    """Step N times (explaining, paused between steps) == generate N tokens in one go."""
    prompt = loaded.tokenizer.encode("Hello loop", bos=True)
    n = 12
    plain = Generator(loaded).generate(prompt, params, max_new_tokens=n)
    expected = [s.token_id for s in plain]
    prefills: list[int] = []
    stepped = Generator(loaded).generate(
        prompt, params, max_new_tokens=n, on_prefill=lambda done, _total: prefills.append(done)
    )
    stepped.sampler.explain = True
    stream = iter(stepped)
    got = []
    for _ in range(n):
        try:
            step = next(stream)
        except StopIteration:
            break
        assert stepped.last_stages.token_id == step.token_id
        got.append(step.token_id)
        assert prefills[-1] == len(prompt)  # the prompt was read once, on the first step
        calls = len(prefills)
    assert got == expected
    assert len(prefills) == calls
    assert stepped.last_step_yielded == (len(got) == n)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
        SamplingParams(temperature=1.5, top_k=0, top_p=0.5, min_p=0.0, repetition_penalty=1.0),
        SamplingParams(temperature=0.9, top_k=7, top_p=1.0, min_p=0.2, repetition_penalty=0.8),
    ],
)
def test_each_stage_matches_transformers_logits_processors(params: SamplingParams) -> None:
    """The distribution after each stage equals transformers' processor of the same name, applied
    in the same order (penalty, temperature, top-k, top-p, min-p)."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    x = logits(11, vocab=400)
    history = [3, 5, 8, 13, 21, 34]
    found = explain_choice(x, history, params, torch.Generator().manual_seed(0), shown=400)
    ids = torch.tensor([history])
    scores = x[None].clone()
    chain = [
        ("penalty", RepetitionPenaltyLogitsProcessor(params.repetition_penalty)),
        ("temperature", TemperatureLogitsWarper(params.temperature)),
        ("top_k", TopKLogitsWarper(params.top_k) if params.top_k else None),
        ("top_p", TopPLogitsWarper(params.top_p) if params.top_p < 1 else None),
        ("min_p", MinPLogitsWarper(params.min_p) if params.min_p > 0 else None),
    ]
    ours = {stage.key: stage for stage in found.stages}
    for key, processor in chain:
        if processor is not None:
            scores = processor(ids, scores)
        reference = torch.softmax(scores[0].double(), -1)
        stage = ours[key]
        assert stage.survivors == int((reference > 0).sum()), key
        assert stage.rest == pytest.approx(0.0, abs=1e-12)  # every survivor listed (shown=400)
        got = {r.token_id: r.prob for r in stage.rows}
        want = {i: float(p) for i, p in enumerate(reference.tolist()) if p > 0}
        assert set(got) == set(want), key
        assert [got[i] for i in want] == pytest.approx(list(want.values()), abs=1e-6), key
