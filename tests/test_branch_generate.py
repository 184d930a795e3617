"""Continuing a reply from its middle with another token (a branch), on the tiny real models.

A branch from step k of a reply must be exactly what the model would have written had it picked
that token there (checked against transformers), and must reuse the KV cache of everything before
it: only the last position of the shared prefix is run again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.events import GREEDY
from engine.generation.generate import Generator
from engine.loading.loader import load_model
from tests.test_generate import hf_greedy, run_all


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(tiny_model_dir, dtype="float32", device="cpu")


def test_a_branch_continues_from_the_forced_token_and_reuses_the_shared_prefix(
    loaded, tiny_model_dir: Path
) -> None:
    prompt = loaded.tokenizer.encode("Hello world, the attention loop", bos=True)
    generator = Generator(loaded)
    first, original = run_all(generator.generate(prompt, GREEDY, max_new_tokens=12, report_top=5))
    assert len(first) >= 6, "the fixture model should write a few tokens"
    k = 4
    alternative = first[k].top[1]  # the model's second choice at step k
    assert alternative.token_id != first[k].token_id

    progress: list[tuple[int, int]] = []
    steps, result = run_all(
        generator.generate(
            prompt,
            GREEDY,
            max_new_tokens=8,
            report_top=5,
            reply_prefix=[s.token_id for s in first[:k]],
            forced=[alternative.token_id],
            on_prefill=lambda done, total: progress.append((done, total)),
        )
    )
    # The first streamed step is the forced token, numbered as step k of the reply, reported
    # with the numbers the model gave it at step k of the original reply.
    forced = steps[0]
    assert (forced.index, forced.token_id) == (k, alternative.token_id)
    assert forced.prob == pytest.approx(alternative.prob, abs=1e-6)
    assert [t.token_id for t in forced.top] == [t.token_id for t in first[k].top]
    assert [s.index for s in steps] == list(range(k, k + len(steps)))

    # KV reuse: the prompt and the first k - 1 reply tokens were cached; one position is re-run.
    assert result.prompt_tokens == len(prompt) + k
    assert result.reused_tokens == len(prompt) + k - 1
    assert progress == [(len(prompt) + k, len(prompt) + k)]

    # What follows is the model's own greedy continuation after the forced token.
    branch_ids = [s.token_id for s in steps]
    reference = hf_greedy(tiny_model_dir, prompt + result.token_ids[: k + 1], 7)
    if result.stop_reason == "eos":
        reference = reference[: len(branch_ids) - 1]
    assert branch_ids[1:] == reference
    fresh = [
        s.token_id
        for s in Generator(loaded).generate(
            prompt + result.token_ids[: k + 1], GREEDY, max_new_tokens=7
        )
    ]
    assert branch_ids[1:] == fresh

    # The result is the whole reply; the streamed texts join onto the original prefix's.
    assert result.token_ids == [s.token_id for s in first[:k]] + branch_ids
    assert result.generated_tokens == len(steps)
    streamed = "".join(s.text for s in first[:k]) + "".join(s.text for s in steps)
    assert streamed == result.text == loaded.tokenizer.decode(result.token_ids)
    assert original.text != result.text


def test_a_branch_without_a_cache_gives_the_same_reply(loaded) -> None:
    prompt = loaded.tokenizer.encode("The cache", bos=True)
    first, _ = run_all(Generator(loaded).generate(prompt, GREEDY, max_new_tokens=6))
    prefix, alternative = [s.token_id for s in first[:2]], first[2].top[2].token_id
    cached = Generator(loaded)
    run_all(cached.generate(prompt, GREEDY, max_new_tokens=6))
    warm = run_all(cached.generate(prompt, GREEDY, 5, reply_prefix=prefix, forced=[alternative]))
    cold = run_all(
        Generator(loaded).generate(prompt, GREEDY, 5, reply_prefix=prefix, forced=[alternative])
    )
    assert [s.token_id for s in warm[0]] == [s.token_id for s in cold[0]]
    assert warm[1].reused_tokens == len(prompt) + 1 and cold[1].reused_tokens == 0


def test_a_forced_token_outside_the_vocabulary_is_refused(loaded) -> None:
    vocab = loaded.args.vocab_size
    with pytest.raises(EngineError, match="forced token id .* outside the vocabulary"):
        Generator(loaded).generate([1, 5], GREEDY, forced=[vocab])
    with pytest.raises(EngineError, match="reply token id -1 is outside"):
        Generator(loaded).generate([1, 5], GREEDY, reply_prefix=[-1])
