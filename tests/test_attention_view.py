"""Attention view: selecting a generated token shows loop attention's weights for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from desktop.views.attention_view import AVERAGE, MAXIMUM, combine, head_focus
from engine.loading.loader import load_model
from engine.text.chat import Message, chat_prompt_ids
from tests.window_helpers import ask, greedy, load, make_window


def test_head_focus_and_combine() -> None:
    assert head_focus([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert head_focus([0.25] * 4) == pytest.approx(0.0)
    heads = [[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]
    assert combine(heads, AVERAGE) == pytest.approx([0.25, 0.35, 0.4])
    assert combine(heads, MAXIMUM) == pytest.approx([0.5, 0.5, 0.8])
    assert combine(heads, 1) == heads[1]


@pytest.fixture
def window(qtbot, home: Path):
    win = make_window(qtbot, home)
    yield win
    win.close()


def click_token(qtbot, reply, index: int) -> None:
    """Click the middle of step `index` in a reply's token view."""
    if not reply.token_view:
        qtbot.mouseClick(reply.tokens_button, Qt.MouseButton.LeftButton)
    offset = sum(len(s["text"]) for s in reply.steps[:index]) + len(reply.steps[index]["text"]) // 2
    cursor = QTextCursor(reply.body.document())
    cursor.setPosition(offset)
    rect = reply.body.cursorRect(cursor)
    qtbot.mouseClick(reply.body.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def transformers_attention(folder: Path, ids: list[int]) -> list[torch.Tensor]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    return [layer[0, :, -1, :] for layer in out.attentions]


def test_selecting_a_token_shows_its_attention(qtbot, window, tiny_model_dir: Path) -> None:
    load(qtbot, window, tiny_model_dir)
    greedy(window, 10)
    window.sampling.system_prompt.setPlainText("")
    ask(qtbot, window, "What is a loop")
    reply = window.chat.messages[-1]
    index = next(i for i, s in enumerate(reply.steps) if s["text"].strip() and i > 0)

    # Closed view: a click shows the top-k only, no engine work.
    assert window.attention.select(reply, index) is None
    window.attention.action.setChecked(True)
    assert window.attention.dock.isVisible()
    with qtbot.waitSignal(window.attention.shown, timeout=60_000) as shown:
        click_token(qtbot, reply, index)
    result = shown.args[0]
    view = window.attention.view

    # The context is the reply's prompt plus the reply's tokens before the selected one.
    loaded = load_model(tiny_model_dir, dtype="float32", device="cpu")
    tokenizer_ids = chat_prompt_ids(
        loaded.tokenizer, [Message("user", "What is a loop")], loaded.chat_template
    )
    context = tokenizer_ids + [s["token_id"] for s in reply.steps[:index]]
    assert len(result.texts) == len(context) and result.prompt_tokens == len(tokenizer_ids)
    expected = transformers_attention(tiny_model_dir, context)
    assert view.layer.count() == len(expected) == len(result.weights)
    for layer in range(view.layer.count()):
        view.layer.setCurrentIndex(layer)
        heads = view.layer_weights()
        assert len(heads) == 4
        for h, row in enumerate(heads):
            assert sum(row) == pytest.approx(1.0, abs=1e-5)  # each head sums to 1
            assert (torch.tensor(row) - expected[layer][h]).abs().max().item() < 1e-5
        view.head.setCurrentText(AVERAGE)
        assert sum(view.shown_weights()) == pytest.approx(1.0, abs=1e-5)
        view.head.setCurrentText(MAXIMUM)
        assert view.shown_weights() == pytest.approx([max(c) for c in zip(*heads, strict=True)])
    view.grid.picked.emit(0, 3)
    assert view.layer.currentIndex() == 0 and view.mode() == 3
    assert view.shown_weights() == view.layer_weights()[3]


def test_saved_conversation_recomputes_on_demand(qtbot, window, tiny_model_dir: Path) -> None:
    load(qtbot, window, tiny_model_dir)
    greedy(window, 8)
    window.sampling.system_prompt.setPlainText("")
    ask(qtbot, window, "Hello")
    saved = window.conversation_id
    window.new_chat()
    with qtbot.waitSignal(window.opener.ready, timeout=10_000):
        window.open_conversation(saved)
    qtbot.waitUntil(lambda: len(window.chat.messages) == 2, timeout=10_000)
    reply = window.chat.messages[-1]
    assert reply.steps  # read back from the store
    window.attention.action.setChecked(True)
    with qtbot.waitSignal(window.attention.shown, timeout=60_000) as shown:
        click_token(qtbot, reply, len(reply.steps) - 1)
    for layer in shown.args[0].weights:
        for row in layer:
            assert sum(row) == pytest.approx(1.0, abs=1e-5)
