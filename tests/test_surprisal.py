"""Surprisal tint: the engine thread's numbers painted on the cards; the jobs without a window."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

from desktop.inspect_jobs import AttentionJob, SurprisalJob
from desktop.views.surprisal import SURPRISAL_INDEX, EntropySparkline, tint, tooltip
from engine.events import GREEDY
from engine.front_door import Engine
from engine.generation.generate import Generator
from engine.generation.inspect import inspect_tokens
from engine.loading.loader import load_model
from engine.text.chat import Message, chat_prompt_ids
from tests.window_helpers import ask, greedy, load, make_window

CONVERSATION = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there, loop"},
    {"role": "assistant", "content": "the loop attends"},
    {"role": "user", "content": "Why attention?"},
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(tiny_model_dir, dtype="float32", device="cpu")


def test_surprisal_job_covers_every_message(loaded) -> None:
    result = SurprisalJob(CONVERSATION, top=4).run(Engine(loaded))
    assert result.tokens[0] is None  # the system prompt has no card
    ids = chat_prompt_ids(
        loaded.tokenizer,
        [Message(m["role"], m["content"]) for m in CONVERSATION],
        loaded.chat_template,
    )
    reference = inspect_tokens(loaded, ids, attention=False)
    probs = {round(math.exp(lp), 9) for lp in reference.logprobs[1:]}
    for message, tokens in zip(CONVERSATION[1:], result.tokens[1:], strict=True):
        assert tokens is not None
        assert "".join(t.text for t in tokens) == message["content"]
        for token in tokens:
            assert 0 < token.prob <= 1 and token.rank >= 1 and len(token.top) == 4
            assert round(token.prob, 9) in probs  # the prompt's own numbers, by position
            assert token.surprisal_bits == pytest.approx(-math.log2(token.prob))
            assert token.entropy > 0


def test_attention_job_rows_sum_to_one(loaded) -> None:
    reply = tuple(loaded.tokenizer.encode("the loop attends", bos=False))
    result = AttentionJob(CONVERSATION[:2], reply, index=2).run(Engine(loaded))
    n = result.prompt_tokens + 2
    assert len(result.texts) == n
    assert len(result.weights) == loaded.args.n_layers
    for layer in result.weights:
        assert len(layer) == loaded.args.n_heads
        for row in layer:
            assert len(row) == n and sum(row) == pytest.approx(1.0, abs=1e-5)


def test_tint_and_tooltip_say_how_surprising() -> None:
    assert tint(0.0).alphaF() < tint(6.0).alphaF() < tint(20.0).alphaF()
    assert tint(None).alpha() == 0
    from desktop.inspect_jobs import TokenInfo

    token = TokenInfo(" loop", 0.25, 3, ((" the", 0.4), (" a", 0.3), (" loop", 0.25)), 1.5)
    text = tooltip(token)
    assert "p = 0.25" in text and "2.0 bits" in text and "rank 3" in text and "␣the" in text


def char_formats(card) -> list[tuple[str, object]]:
    """(text, format) of every fragment in a card's document."""
    out = []
    block = card.body.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            out.append((fragment.text(), fragment.charFormat()))
            it += 1
        block = block.next()
    return out


def test_toggling_surprisal_colours_tokens(qtbot, home: Path, tiny_model_dir):
    window = make_window(qtbot, home)
    load(qtbot, window, tiny_model_dir)
    greedy(window, 10)
    window.sampling.system_prompt.setPlainText("")
    ask(qtbot, window, "Hello there")
    user, reply = window.chat.messages[-2:]

    with qtbot.waitSignal(window.surprisal.applied, timeout=60_000) as applied:
        window.surprisal.action.setChecked(True)
    assert applied.args[0] == 2
    for card in (user, reply):
        fragments = char_formats(card)
        tinted = [f for _, f in fragments if f.property(SURPRISAL_INDEX) is not None]
        assert len(tinted) >= 2
        assert any(f.background().color().alpha() > 0 for f in tinted)
        assert "".join(text for text, _ in fragments) == card.text.strip()
    sparks = reply.findChildren(EntropySparkline)
    assert len(sparks) == 1 and len(sparks[0].values) >= 1
    assert not user.findChildren(EntropySparkline)
    # the tint did not leave the GUI thread waiting: the job ran in the engine thread
    assert not window.controller.busy

    window.surprisal.action.setChecked(False)
    for card in (user, reply):
        assert all(f.property(SURPRISAL_INDEX) is None for _, f in char_formats(card))
    assert not reply.findChildren(EntropySparkline)

    # The inspection left its ids in the KV cache for the generator: the next turn reuses the
    # shared prefix and still answers exactly as a fresh prefill would.
    messages = [Message(m["role"], m["content"]) for m in window.history]
    messages.append(Message("user", "Why?"))
    result = ask(qtbot, window, "Why?")
    assert result["reused_tokens"] > 0
    fresh = load_model(tiny_model_dir, dtype="float32", device="cpu")
    ids = chat_prompt_ids(fresh.tokenizer, messages, fresh.chat_template)
    expected = Generator(fresh).generate(ids, GREEDY, max_new_tokens=10)
    assert [step.token_id for step in expected] == result["token_ids"]
    window.close()


def test_message_spans_find_each_message_in_order(loaded) -> None:
    from engine.text.token_spans import find_run, message_spans, token_texts

    assert find_run([5, 1, 2, 1, 2], [1, 2], 2) == 3
    assert find_run([5, 1, 2], [2, 1], 0) == -1
    tok = loaded.tokenizer
    turns = [
        Message("user", "loop loop"),
        Message("assistant", "loop"),
        Message("user", "loop loop"),
    ]
    ids = chat_prompt_ids(tok, turns, loaded.chat_template)
    spans = message_spans(tok, ids, ["loop loop", "loop", "loop loop", "never said"])
    assert spans[3] is None
    starts = [s[0] for s in spans[:3]]
    assert starts == sorted(starts) and len(set(starts)) == 3  # in order, never reused
    for (start, end), text in zip(spans[:3], ["loop loop", "loop", "loop loop"], strict=True):
        assert "".join(token_texts(tok, ids[start:end])) == text


def test_a_failed_tint_turns_itself_off_with_a_notice(qtbot, tmp_path: Path, monkeypatch) -> None:
    from desktop.inspect_jobs import InspectFailed
    from desktop.main_window import MainWindow

    monkeypatch.setenv("LOOPCHAT_HOME", str(tmp_path / "home"))
    window = MainWindow(QSettings(str(tmp_path / "l.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    tint_control = window.surprisal
    tint_control.action.setChecked(True)  # no model: nothing is asked yet
    tint_control._job = 41
    with qtbot.waitSignal(window.error_shown, timeout=5000) as shown:
        window.controller.worker.inspected.emit(InspectFailed(41, "the prompt is too long"))
    assert "too long" in shown.args[0]
    assert not tint_control.action.isChecked()
    window.close()


# -- conversations longer than the model's context ---------------------------------------------

WORDS = "the loop attends to every token before it and the model reads the cache".split()


def long_turns(pairs: int, words: int = 45) -> list[dict]:
    """Alternating user/assistant turns of `words` words each (about as many tokens)."""
    out = []
    for i in range(2 * pairs):
        text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words))
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} {text}"})
    return out


def test_a_conversation_longer_than_the_context_is_tinted_in_sliding_windows(loaded) -> None:
    system = [{"role": "system", "content": "Be brief."}]
    conversation = tuple(system + long_turns(12))
    limit = loaded.max_context
    all_ids = chat_prompt_ids(
        loaded.tokenizer,
        [Message(m["role"], m["content"]) for m in conversation[:-1]],
        loaded.chat_template,
    )
    assert len(all_ids) > 2 * limit  # the old job refused this ("the prompt is ... tokens")

    result = SurprisalJob(conversation, top=3).run(Engine(loaded))
    assert result.windows > 2 and result.too_long == ()
    assert result.tokens[0] is None  # the system prompt
    assert all(tokens is not None for tokens in result.tokens[1:])
    for i in range(1, len(conversation)):
        start = result.window_starts[i]
        assert start >= 1 and (start - 1) % 2 == 0  # a window starts at a user turn
        window = system + list(conversation[start : i + 1])
        # The model is causal: this message's numbers are those of the window that ends with it.
        alone = SurprisalJob(tuple(window), top=3).run(Engine(loaded)).tokens[-1]
        got = result.tokens[i]
        assert [t.text for t in got] == [t.text for t in alone]
        assert [t.prob for t in got] == pytest.approx([t.prob for t in alone], abs=1e-5)
        before = conversation_ids_of(loaded, system + list(conversation[start:i]))
        if i > 2:  # later messages keep a good share of the context before them
            assert before >= limit // 4
        assert conversation_ids_of(loaded, window) <= limit


def conversation_ids_of(loaded, messages: list[dict]) -> int:

    if not messages or all(m["role"] == "system" for m in messages):
        return 0
    engine = Engine(loaded)
    return len(engine.conversation_ids([Message(m["role"], m["content"]) for m in messages]))


def test_a_message_longer_than_the_context_is_left_untinted_and_named(loaded) -> None:
    huge = {"role": "user", "content": " ".join(["loop"] * (2 * loaded.max_context))}
    conversation = tuple(long_turns(2) + [huge])
    result = SurprisalJob(conversation).run(Engine(loaded))
    assert result.too_long == (4,)
    assert result.tokens[4] is None
    assert all(tokens is not None for tokens in result.tokens[:4])


def test_the_window_tints_an_over_long_conversation_and_says_how(
    qtbot, home: Path, tiny_model_dir
) -> None:
    window = make_window(qtbot, home)
    load(qtbot, window, tiny_model_dir)
    turns = long_turns(8) + [{"role": "user", "content": " ".join(["loop"] * 1100)}]
    conv = window.store.create_conversation("", "m")
    for turn in turns:
        window.store.add_message(conv, turn["role"], turn["content"])
    with qtbot.waitSignal(window.opener.ready, timeout=30_000):
        window.open_conversation(conv)
    notices: list[str] = []
    window.error_shown.connect(notices.append)
    with qtbot.waitSignal(window.surprisal.applied, timeout=120_000) as applied:
        window.surprisal.action.setChecked(True)
    assert applied.args[0] == 16  # every message but the one too long for the context
    assert window.surprisal.enabled  # it did not give up
    assert any("longer than the model's context" in n and "passes" in n for n in notices)
    assert any("1 message is not tinted" in n for n in notices)
    cards = window.chat.messages
    assert "Not tinted" in cards[-1].toolTip() and "context" in cards[-1].toolTip()
    assert all(
        any(f.property(SURPRISAL_INDEX) is not None for _, f in char_formats(card))
        for card in cards[:-1]
    )
    window.close()
