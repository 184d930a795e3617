"""Speculative decoding (engine/generation/speculative.py) is exact.

Greedy: the same tokens as plain greedy decoding, whatever the draft guesses. Sampling: every token
comes out with the probability plain sampling gives it, checked by chi-square against the exact
distributions computed from the model's logits (and a broken acceptance rule fails the same test).
After a rejection, both KV caches hold what a fresh prefill of the accepted text writes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.events import GREEDY, SamplingParams
from engine.front_door import Engine
from engine.generation import speculative
from engine.generation.sampling import choose_token, final_distribution
from engine.generation.speculative import ModelDraft, PromptLookup, Verifier
from engine.loading.loader import load_model

PROMPTS = [
    [1, 5, 9, 17, 33, 65, 129, 257],
    [1, 300, 301, 302, 300, 301, 302, 300, 301],  # repeats: prompt lookup finds matches
    [1, 42],
    [1, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    [1, *range(100, 140)],
    [1, 11, 200, 11, 200, 11, 200, 11, 400, 401, 11, 200],
]
MAX_NEW = 40
ALPHA = 1e-3
"""Significance of the distribution tests: a correct sampler fails one by chance once in 1,000
(each test's seeds are fixed, so a run is reproducible)."""


def _engine(folder: Path, **kw) -> Engine:
    return Engine(load_model(folder, dtype="float32", device="cpu", **kw))


def _greedy_ids(engine: Engine, prompt: list[int], max_new: int = MAX_NEW) -> tuple[list, object]:
    reply = engine.reply(prompt, GREEDY, max_new_tokens=max_new, report_top=3)
    steps = list(reply)
    assert reply.result is not None
    return [s.token_id for s in steps], reply.result, steps


@pytest.fixture(params=["gqa", "mha"])
def target_dir(request, tiny_gqa_hf_dir: Path, tiny_hf_dir: Path) -> Path:
    return tiny_gqa_hf_dir if request.param == "gqa" else tiny_hf_dir


@pytest.fixture
def other_dir(target_dir: Path, tiny_gqa_hf_dir: Path, tiny_hf_dir: Path) -> Path:
    """A draft with the same tokenizer but other (random) weights: it is often wrong, so the
    rejection path runs on most passes."""
    return tiny_hf_dir if target_dir == tiny_gqa_hf_dir else tiny_gqa_hf_dir


@pytest.mark.parametrize("draft", ["lookup", "self", "other", "self-int4"])
def test_greedy_speculative_equals_plain_greedy(target_dir, other_dir, draft) -> None:
    plain = _engine(target_dir)
    spec = _engine(target_dir)
    named = {"self": str(target_dir), "other": str(other_dir)}
    spec.use_draft(named.get(draft, draft))
    totals = {"proposed": 0, "accepted": 0}
    for prompt in PROMPTS:
        want, plain_result, plain_steps = _greedy_ids(plain, prompt)
        got, result, steps = _greedy_ids(spec, prompt)
        assert got == want, prompt
        assert result.stop_reason == plain_result.stop_reason
        assert result.text == plain_result.text
        # The numbers shown are the model's own, drafted or not.
        for a, b in zip(steps, plain_steps, strict=True):
            assert a.prob == pytest.approx(b.prob, abs=1e-5)
            assert [t.token_id for t in a.top] == [t.token_id for t in b.top]
        assert result.draft is not None
        # Every drafted step was accepted; so may the end token be (it ends the reply unseen).
        drafted = sum(s.drafted for s in steps)
        assert drafted <= result.draft.accepted <= drafted + (result.stop_reason == "eos")
        totals["proposed"] += result.draft.proposed
        totals["accepted"] += result.draft.accepted
        if draft == "self":  # a model always agrees with itself
            assert result.draft.accepted == result.draft.proposed
    assert totals["proposed"] > 0
    if draft == "self-int4":  # its own 4-bit copy: mostly the same guesses
        assert spec.draft is not None and totals["accepted"] > totals["proposed"] / 2
    if draft == "other":
        assert totals["accepted"] < totals["proposed"]  # the rejection path did run


@pytest.mark.parametrize("native", ["compiled", "off"])
def test_greedy_speculative_equals_plain_with_and_without_compiled_kernels(
    tiny_gqa_hf_dir, tiny_hf_dir, monkeypatch, tmp_path, native
) -> None:
    """int8 weights on Loopchat's compiled kernel (int8native) and on torch alone."""
    from engine.kernels import native as native_lib

    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    if native == "compiled":
        if native_lib.load() is None:
            pytest.skip(f"no compiled kernels here: {native_lib.unavailable_reason()}")
        monkeypatch.setenv("LOOPCHAT_KERNEL", "int8native")
    else:
        monkeypatch.setenv("LOOPCHAT_NATIVE", "0")
        native_lib.load.cache_clear()
    try:
        plain = _engine(tiny_gqa_hf_dir, quant="int8")
        spec = _engine(tiny_gqa_hf_dir, quant="int8")
        ran = plain.describe()["kernel"]
        assert (ran == "int8native") == (native == "compiled"), ran
        spec.use_draft(str(tiny_hf_dir), quant="int8")
        for prompt in PROMPTS:
            assert _greedy_ids(spec, prompt)[0] == _greedy_ids(plain, prompt)[0], prompt
        spec.use_draft("lookup")
        for prompt in PROMPTS:
            assert _greedy_ids(spec, prompt)[0] == _greedy_ids(plain, prompt)[0], prompt
    finally:
        native_lib.load.cache_clear()


def _layer_caches(engine_or_loaded) -> list[tuple[torch.Tensor, torch.Tensor]]:
    model = engine_or_loaded.model
    return [(layer.attention.cache.keys, layer.attention.cache.values) for layer in model.layers]


def test_kv_caches_after_rejections_equal_a_fresh_prefill(tiny_gqa_hf_dir, tiny_hf_dir) -> None:
    spec = _engine(tiny_gqa_hf_dir)
    spec.use_draft(str(tiny_hf_dir))
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    reply = spec.reply(PROMPTS[0], params, max_new_tokens=30)
    steps = list(reply)
    assert reply.result.draft.accepted < reply.result.draft.proposed  # some were rejected
    assert any(s.check is not None and not s.check.accepted for s in steps)
    for holder, ids in (
        (spec._generator.loaded, spec._generator._cached_ids),
        (spec._draft.loaded, spec._draft._cached),
    ):
        n = len(ids)
        assert n > len(PROMPTS[0])
        fresh = load_model(holder.path, dtype="float32", device="cpu")
        with torch.inference_mode():
            fresh.model(torch.tensor(ids), 0)
        for (k, v), (fk, fv) in zip(_layer_caches(holder), _layer_caches(fresh), strict=True):
            torch.testing.assert_close(k[:, :n], fk[:, :n], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(v[:, :n], fv[:, :n], atol=1e-5, rtol=1e-4)
    # The reply is what the cache holds after the prompt (its last token is not fed yet).
    assert spec._generator._cached_ids == PROMPTS[0] + reply.result.token_ids[:-1]


# -- the distribution ------------------------------------------------------------------------------


SETTINGS = [
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=0.7, top_k=12, top_p=1.0, min_p=0.0, repetition_penalty=1.3),
    SamplingParams(temperature=1.3, top_k=0, top_p=0.8, min_p=0.02),
]


@pytest.mark.parametrize("params", SETTINGS + [GREEDY])
def test_final_distribution_is_what_choose_token_draws_from(params) -> None:
    torch.manual_seed(0)
    logits = torch.randn(512) * 3
    history = [5, 9, 9, 40]
    seen: dict = {}

    def observe(stage: str, **found) -> None:
        seen[stage] = found

    choose_token(logits, history, params, torch.Generator().manual_seed(0), observe)
    want = torch.zeros(512, dtype=torch.float64)
    if params.greedy:
        want[seen["greedy"]["token"]] = 1.0
    else:
        drawn = seen["draw"]
        want[drawn["ids"]] = drawn["probs"].double() / drawn["probs"].double().sum()
    got = final_distribution(logits, history, params)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def _exact_marginals(engine: Engine, prompt: list[int], params: SamplingParams):
    """P(first token) and P(second token) as plain sampling gives them, from the model's logits."""
    model = engine._generator.loaded.model
    speakable = engine._generator.loaded.tokenizer.vocab_size
    eos = engine._generator.loaded.tokenizer.eos_id
    with torch.inference_mode():
        first_logits = model(torch.tensor(prompt), 0)[-1][:speakable]
        first = final_distribution(first_logits, prompt, params)
        second = torch.zeros_like(first)
        for t in torch.nonzero(first > 1e-9).flatten().tolist():
            if t == eos:  # the reply ended there (`_sample_pairs` counts the end token again)
                second[eos] += first[t]
                continue
            logits = model(torch.tensor([t]), len(prompt))[-1][:speakable]
            second += first[t] * final_distribution(logits, [*prompt, t], params)
    engine._generator.forget_cache()
    return first, second


def _p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; bins with expected count below 5 are pooled."""
    n = float(counts.sum())
    expected = probs.double() * n
    big = expected >= 5
    observed = torch.cat([counts[big].double(), counts[~big].double().sum().reshape(1)])
    expected = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    if float(expected[-1]) < 5:  # fold a small pooled bin into the smallest big one
        smallest = int(torch.argmin(expected[:-1]))
        observed[smallest] += observed[-1]
        expected[smallest] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    stat = float(((observed - expected) ** 2 / expected).sum())
    df = len(expected) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))


def _sample_pairs(engine: Engine, prompt, params, n: int, seed0: int) -> torch.Tensor:
    pairs = torch.zeros(n, 2, dtype=torch.long)
    for i in range(n):
        seeded = SamplingParams(**{**params.to_dict(), "seed": seed0 + i})
        reply = engine.reply(prompt, seeded, max_new_tokens=3, report_top=0)
        ids = [s.token_id for s in reply][:2]
        eos = engine._generator.loaded.tokenizer.eos_id
        ids += [eos] * (2 - len(ids))  # a reply that ended: the end token was drawn there
        pairs[i] = torch.tensor(ids)
    return pairs


@pytest.fixture(scope="module")
def distribution_engines(tiny_gqa_hf_dir, tiny_hf_dir):
    spec = _engine(tiny_gqa_hf_dir)
    spec.use_draft(str(tiny_hf_dir), k=2)
    return _engine(tiny_gqa_hf_dir), spec


DIST_PROMPT = [1, 40, 41, 42, 43]
N_SAMPLES = 1200


@pytest.mark.parametrize("params", SETTINGS)
def test_speculative_sampling_gives_plain_samplings_distribution(
    distribution_engines, params
) -> None:
    plain, spec = distribution_engines
    first, second = _exact_marginals(spec, DIST_PROMPT, params)
    vocab = first.shape[0]
    drawn = _sample_pairs(spec, DIST_PROMPT, params, N_SAMPLES, seed0=10_000)
    p1 = _p_value(torch.bincount(drawn[:, 0], minlength=vocab)[:vocab], first)
    p2 = _p_value(torch.bincount(drawn[:, 1], minlength=vocab)[:vocab], second)
    assert p1 > ALPHA and p2 > ALPHA, (p1, p2)
    # The test itself is calibrated: plain sampling passes it too.
    drawn = _sample_pairs(plain, DIST_PROMPT, params, N_SAMPLES // 3, seed0=20_000)
    assert _p_value(torch.bincount(drawn[:, 0], minlength=vocab)[:vocab], first) > ALPHA


def test_a_broken_acceptance_rule_fails_the_distribution_test(
    distribution_engines, monkeypatch
) -> None:
    """Accepting a drafted token whenever the draft likes it at least as much as the model
    (q ≥ p), instead of with probability p/q, skews the output towards the draft's guesses."""
    _, spec = distribution_engines
    params = SETTINGS[1]

    def broken(self, scores, history, proposed, q):
        p = final_distribution(scores, history, self.params)
        qx, px = float(q[proposed]), float(p[proposed])
        self.proposed += 1
        if qx >= px:
            self.accepted += 1
            verdict = self._verdict(proposed, px, qx, True, 0.0)
            return speculative.Pick(
                speculative.reported(scores, proposed, self.report_top), True, verdict
            )
        residual = speculative.residual_distribution(p, q, proposed)
        token = int(torch.multinomial(residual, 1, generator=self.generator))
        verdict = self._verdict(proposed, px, qx, False, 1.0, residual)
        return speculative.Pick(speculative.reported(scores, token, self.report_top), check=verdict)

    first, _ = _exact_marginals(spec, DIST_PROMPT, params)
    monkeypatch.setattr(Verifier, "check", broken)
    drawn = _sample_pairs(spec, DIST_PROMPT, params, N_SAMPLES, seed0=30_000)
    vocab = first.shape[0]
    # Fails the very test the exact rule passes, at the same significance level, by far.
    assert _p_value(torch.bincount(drawn[:, 0], minlength=vocab)[:vocab], first) < ALPHA / 100


# -- the drafts ------------------------------------------------------------------------------------


def test_prompt_lookup_proposes_what_followed_the_latest_match() -> None:
    lookup = PromptLookup(ngram=3)
    history = [1, 5, 6, 7, 8, 9, 2, 5, 6, 7, 3, 4, 5, 6, 7]
    # The last 3 tokens (5 6 7) occurred twice before; the latest one was followed by 3 4.
    assert lookup.propose(history, 4, GREEDY, None).tokens == [3, 4, 5, 6]
    assert lookup.propose(history, 1, GREEDY, None).tokens == [3]
    assert lookup.propose([1, 2, 3], 4, GREEDY, None).tokens == []  # nothing repeats
    assert lookup.propose([1, 2, 9, 2], 4, GREEDY, None).tokens == [9, 2]  # 1-gram fallback


def test_a_draft_with_another_vocabulary_is_refused(tmp_path, tiny_gqa_hf_dir, tokenizer_path):
    from tests.fixtures.models import random_llama, write_hf
    from tests.fixtures.tokenizer import train_tokenizer

    other_tok = train_tokenizer(tmp_path / "tok", vocab_size=384)
    write_hf(random_llama(kv_heads=2, seed=9, vocab=384), tmp_path / "small", other_tok, False)
    engine = _engine(tiny_gqa_hf_dir)
    engine.use_draft("lookup")
    with pytest.raises(EngineError, match="same tokenizer"):
        engine.use_draft(str(tmp_path / "small"))
    assert engine.draft == "lookup"  # the draft in use stays
    with pytest.raises(EngineError, match="draft-k"):
        engine.use_draft("lookup", k=0)


def test_model_draft_rolls_back_to_the_accepted_text(tiny_gqa_hf_dir, tiny_hf_dir) -> None:
    draft = ModelDraft(load_model(tiny_hf_dir, dtype="float32", device="cpu"))
    first = draft.propose([1, 40, 41], 4, GREEDY, None).tokens
    assert len(first) == 4
    # The model kept only the first guess: the draft continues from there, as if fresh.
    again = draft.propose([1, 40, 41, first[0], 77], 3, GREEDY, None).tokens
    fresh = ModelDraft(load_model(tiny_hf_dir, dtype="float32", device="cpu"))
    assert again == fresh.propose([1, 40, 41, first[0], 77], 3, GREEDY, None).tokens


def test_steps_say_what_was_drafted_and_what_was_rejected(tiny_gqa_hf_dir, tiny_hf_dir) -> None:
    engine = _engine(tiny_gqa_hf_dir)
    engine.use_draft(str(tiny_hf_dir), k=3)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5)
    reply = engine.reply(PROMPTS[4], params, max_new_tokens=40)
    steps = list(reply)
    rejected = [s for s in steps if s.check is not None and not s.check.accepted]
    accepted = [s for s in steps if s.drafted]
    assert rejected and accepted
    for s in accepted:
        assert s.check.accepted and s.check.proposed_id == s.token_id
        assert s.check.u * s.check.q < s.check.p + 1e-12
    for s in rejected:
        assert s.check.u * s.check.q >= s.check.p - 1e-12
        assert s.token_id != s.check.proposed_id
        assert s.check.residual and abs(sum(r.prob for r in s.check.residual)) <= 1 + 1e-9
        assert s.check.proposed_id not in [r.token_id for r in s.check.residual]
    d = reply.result.draft
    assert d.kind == "model"
    assert len(accepted) <= d.accepted <= len(accepted) + (reply.result.stop_reason == "eos")
    assert d.passes < len(steps)  # fewer model passes than tokens


def test_speculative_reply_stops_at_context_and_max_tokens(tiny_gqa_hf_dir) -> None:
    engine = Engine(load_model(tiny_gqa_hf_dir, dtype="float32", device="cpu", max_context=24))
    engine.use_draft(str(tiny_gqa_hf_dir))
    prompt = [1, *range(100, 110)]
    reply = engine.reply(prompt, GREEDY, max_new_tokens=100)
    steps = list(reply)
    assert reply.result.stop_reason in ("context_full", "eos")
    if reply.result.stop_reason == "context_full":
        assert len(prompt) + len(steps) == 24 + 1
    for n in (1, 2, 5):
        reply = engine.reply(prompt, GREEDY, max_new_tokens=n)
        assert len(list(reply)) <= n


def test_cli_draft_json_lines(tiny_gqa_hf_dir, tiny_hf_dir) -> None:
    base = [sys.executable, "-m", "engine", "generate", "--model", str(tiny_gqa_hf_dir)]
    args = ["--prompt-ids", ",".join(map(str, PROMPTS[1])), "--temperature", "0", "--json"]
    args += ["--max-new-tokens", "20"]
    plain = subprocess.run(base + args, capture_output=True, text=True, timeout=300)
    spec = subprocess.run(
        base + args + ["--draft", "lookup", "--draft-k", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    plain_lines = [json.loads(x) for x in plain.stdout.splitlines()]
    lines = [json.loads(x) for x in spec.stdout.splitlines()]
    assert "drafted" not in plain_lines[0] and "draft" not in plain_lines[-1]
    assert all(isinstance(x["drafted"], bool) for x in lines[:-1])
    done = lines[-1]
    assert done["token_ids"] == plain_lines[-1]["token_ids"]
    assert done["draft"]["kind"] == "lookup"
    drafted = sum(x["drafted"] for x in lines[:-1])
    assert drafted <= done["draft"]["accepted"] <= drafted + (done["stop_reason"] == "eos")
    assert 0 <= done["draft"]["accepted"] <= done["draft"]["proposed"]
    bad = subprocess.run(
        base + args + ["--draft-k", "0", "--draft", "lookup"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--draft-k" in bad.stderr and "Traceback" not in bad.stderr
    assert math.isfinite(done["decode_tokens_per_s"])


def test_the_built_in_model_and_its_trained_draft() -> None:
    """The shipped draft shares the built-in's tokenizer, agrees with it often enough to save
    passes, and changes nothing in what greedy decoding says."""
    from engine.loading.builtin import builtin_dir, held_out_dialogues
    from engine.text.chat import Message

    plain = Engine.open("builtin", dtype="float32")
    spec = Engine.open("builtin", dtype="float32")
    spec.use_draft("builtin-draft")
    proposed = accepted = passes = tokens = 0
    for question, _ in held_out_dialogues(builtin_dir())[:6]:
        prompt = plain.conversation_ids([Message("user", question)])
        want = _greedy_ids(plain, prompt, 48)[0]
        got, result, _ = _greedy_ids(spec, prompt, 48)
        assert got == want, question
        proposed += result.draft.proposed
        accepted += result.draft.accepted
        passes += result.draft.passes
        tokens += len(got)
    assert accepted > 0.3 * proposed
    assert passes < tokens  # fewer passes of the model than tokens it wrote


def test_loading_a_draft_keeps_the_models_thread_count(tiny_gqa_hf_dir, tiny_hf_dir, monkeypatch):
    """Loading measures (here: is told) the draft's best thread count and sets torch's, one per
    process; the open model's own count must stay for its passes."""
    engine = _engine(tiny_gqa_hf_dir)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("LOOPCHAT_THREADS", "2")  # what the draft's load will set
        engine.use_draft(str(tiny_hf_dir))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_branch_continues_the_same_with_a_draft(tiny_gqa_hf_dir, tiny_hf_dir) -> None:
    """A branch (reply prefix + a forced token) decodes the forced token plainly, then
    speculates: the same continuation as without a draft."""
    plain = _engine(tiny_gqa_hf_dir)
    spec = _engine(tiny_gqa_hf_dir)
    spec.use_draft(str(tiny_hf_dir))
    prompt = PROMPTS[0]
    first = _greedy_ids(plain, prompt, 12)[0]
    branches = []
    for engine in (plain, spec):
        reply = engine.reply(prompt, GREEDY, max_new_tokens=20, reply_prefix=first[:4], forced=[77])
        steps = list(reply)
        assert steps[0].token_id == 77 and steps[0].check is None and not steps[0].drafted
        branches.append(reply.result.token_ids)
    assert branches[0] == branches[1]
    assert reply.result.draft.proposed > 0
