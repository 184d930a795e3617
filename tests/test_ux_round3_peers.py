"""Issue 26, what users of GPT4All, LM Studio and Jan reach for in their first hour: the model of
this chat at a glance (and whether a catalogue model fits before it is downloaded), highlighted
code and styled quotes in both themes, timestamps, pinning, and search that jumps to the match.
Plus item 11's `file://` link that looked like a link and did nothing.

Each test drives the real window or the real message card; layout checks use the app's style
sheet in both themes at 800×600 and 1180×760.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QEvent, QPoint, Qt, QTimer
from PySide6.QtGui import QColor, QGuiApplication, QHelpEvent, QTextFormat
from PySide6.QtWidgets import QApplication, QMenu, QToolTip

from desktop.model_fit import FITS, TIGHT, WONT_FIT, fit_hint, needed_bytes
from desktop.store.conversations import ConversationStore
from desktop.store.schema import MIGRATIONS, migrate
from desktop.theme import CODE_COLOURS, _palette
from desktop.views.chat_view import MessageWidget, written_tooltip
from desktop.views.model_bar import summarize
from engine.events import ModelInfo
from tests.window_helpers import load, make_window

ROOT = Path(__file__).resolve().parents[1]
GB = 10**9


@pytest.fixture
def styled():
    from desktop.app import apply_look

    app = QApplication.instance()
    sheet = app.styleSheet()
    apply_look(app)
    yield app
    app.setStyleSheet(sheet)


@pytest.fixture(params=["light", "dark"])
def theme(request, styled):
    from desktop.theme import apply_theme

    app = QApplication.instance()
    palette = app.palette()
    apply_theme(app, request.param)
    yield request.param
    app.setPalette(palette)


def card(qtbot, text: str, role: str = "assistant") -> MessageWidget:
    widget = MessageWidget(role, text)
    qtbot.addWidget(widget)
    widget.finish(text)
    widget.resize(600, 400)
    widget.show()
    qtbot.waitExposed(widget)
    QGuiApplication.processEvents()
    return widget


def fragments(widget: MessageWidget):
    """(text, char format, block format) of every fragment in the card."""
    block = widget.body.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            yield fragment.text(), fragment.charFormat(), block.blockFormat()
            it += 1
        block = block.next()


# -- A. the model of this chat, at a glance -----------------------------------------------------


def test_the_model_bar_names_the_open_model_its_format_and_memory(
    qtbot, home, hub_env, tiny_hf_dir, tiny_meta_dir
) -> None:
    win = make_window(qtbot, home)
    bar = win.pane.model_bar
    assert "No model open" in bar.full_text()
    info = load(qtbot, win, tiny_hf_dir)
    summary = bar.summary
    assert summary is not None and summary.name == info.name
    assert summary.format == "HF folder"
    assert summary.weights == "float32"  # the dtype the engine reports (tests load float32)
    assert summary.memory and summary.memory in bar.full_text()
    assert info.name in bar.full_text() and str(tiny_hf_dir) in bar.toolTip()
    assert bar.geometry().bottom() < win.chat.geometry().top()  # above the chat

    load(qtbot, win, tiny_meta_dir)
    assert bar.summary.format == "Meta files"

    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton)  # a click opens the model chooser
    qtbot.waitUntil(lambda: win.chooser is not None and win.chooser.isVisible(), timeout=5000)
    win.chooser.close()
    win.close()


def test_the_bar_says_the_weights_kind_and_the_built_in_format() -> None:
    base = {
        "name": "Some model",
        "path": "/nowhere/model",
        "device": "cpu",
        "dtype": "bfloat16",
        "max_context": 2048,
        "weights_bytes": 1_234_000_000,
    }
    int8 = summarize(ModelInfo.from_dict({**base, "quant": "int8"}), "/nowhere/model")
    assert int8.weights == "bfloat16, int8 weights" and int8.format == "folder"
    assert "1.2" in int8.memory
    int4 = summarize(ModelInfo.from_dict({**base, "quant": "int4"}), "/nowhere/model")
    assert int4.weights == "bfloat16, int4 weights"
    builtin = summarize(ModelInfo.from_dict({**base, "quant": "none"}), "builtin")
    assert builtin.format == "built-in" and builtin.weights == "bfloat16"
    gguf = summarize(ModelInfo.from_dict({**base, "path": "/m/x.Q4_0.gguf", "quant": "file"}))
    assert gguf.format == "GGUF file" and gguf.weights == "bfloat16, blocks as in the file"
    said = {**base, "path": "/m/blob", "quant": "file", "file_format": "GGUF Q4_0"}
    assert summarize(ModelInfo.from_dict(said)).format == "GGUF Q4_0"  # an Ollama blob too


@pytest.mark.parametrize("size", [(800, 600), (1180, 760)])
def test_the_model_bar_fits_the_chat_column(qtbot, home, theme, size) -> None:
    from desktop.views.window_layout import split_sizes

    win = make_window(qtbot, home)
    win.resize(*size)
    win.splitter.setSizes(split_sizes(size[0]))
    info = ModelInfo.from_dict(
        {
            "name": "A model with a very long name indeed, " * 3,
            "path": "/nowhere/model",
            "device": "cpu",
            "dtype": "bfloat16",
            "max_context": 4096,
            "weights_bytes": 13_000_000_000,
            "quant": "int8",
        }
    )
    bar = win.pane.model_bar
    bar.show_model(info, "/nowhere/model")
    qtbot.wait(50)
    pane = win.pane
    assert bar.isVisible()
    assert bar.geometry().right() <= pane.width()
    assert bar.width() <= pane.width() and bar.height() < 60
    assert bar.text().endswith("…") and bar.full_text().startswith("A model")
    assert bar.fontMetrics().horizontalAdvance(bar.text()) < bar.width()
    assert win.chat.widget().width() <= win.chat.viewport().width()  # the chat is not widened
    win.close()


def test_a_catalogue_model_says_whether_it_fits_this_computer() -> None:
    tiny = {"n_params": 1_100_048_384, "n_layers": 22, "kv_dim": 256, "context": 2048}
    big = {"n_params": 13_015_864_320, "n_layers": 40, "kv_dim": 5120, "context": 4096}
    need = needed_bytes(tiny)
    assert 2.2 * GB < need < 3.2 * GB  # 2.2 GB of 16-bit weights, a small cache, overhead

    fits = fit_hint(tiny, memory=(12 * GB, 16 * GB))
    assert fits.verdict == FITS and "Fits this computer" in fits.text
    assert "12.0 GB is free" in fits.text and f"{need / GB:.1f} GB" in fits.text

    tight = fit_hint(tiny, memory=(int(2.5 * GB), 8 * GB))
    assert tight.verdict == TIGHT and "close other programs" in tight.text
    assert tight.lighter is not None and tight.lighter[0] == "int8"  # 8-bit would fit
    assert "With 8-bit weights" in tight.text

    wont = fit_hint(big, memory=(6 * GB, 8 * GB))
    assert wont.verdict == WONT_FIT and "this computer has 8.0 GB" in wont.text
    assert wont.lighter is None  # not even 4-bit: nothing lighter is offered
    assert fit_hint({"n_params": 0}) is None  # a row that does not say: no guess


def test_the_chooser_shows_the_fit_hint_before_the_download(
    qtbot, home, hub_env, monkeypatch
) -> None:
    monkeypatch.setattr("desktop.model_fit.memory_now", lambda: (10 * GB, 16 * GB))
    win = make_window(qtbot, home)
    chooser = win.show_model_chooser()
    rows = {}
    for i in range(chooser.items.count()):
        item = chooser.items.item(i)
        data = item.data(Qt.ItemDataRole.UserRole) or {}
        if data.get("kind") == "catalogue":
            rows[data["repo_id"]] = (item.text(), item.toolTip(), data)
    tiny_text, tiny_tip, tiny = rows["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    assert tiny_text.endswith("fits") and "Fits this computer" in tiny_tip
    big_text, big_tip, big = rows["meta-llama/Llama-2-13b-chat-hf"]
    assert big_text.endswith("won't fit") and "this computer has 16.0 GB" in big_tip
    seven_text, seven_tip, _seven = rows["meta-llama/Llama-2-7b-chat-hf"]
    assert seven_text.endswith("won't fit") and "With 4-bit weights" in seven_tip
    chooser.items.setCurrentRow(
        chooser.items.row(chooser.items.findItems("Llama 2 13B", Qt.MatchFlag.MatchStartsWith)[0])
    )
    assert "Won't fit" in chooser.details.text()
    chooser.close()
    win.close()


# -- B. highlighted code, styled quotes, links that are not links ------------------------------


def _contrast(a: QColor, b: QColor) -> float:
    def lum(c: QColor) -> float:
        def ch(v: float) -> float:
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

        return 0.2126 * ch(c.redF()) + 0.7152 * ch(c.greenF()) + 0.0722 * ch(c.blueF())

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _over(top: QColor, bottom: QColor) -> QColor:
    a = top.alphaF()
    return QColor.fromRgbF(
        top.redF() * a + bottom.redF() * (1 - a),
        top.greenF() * a + bottom.greenF() * (1 - a),
        top.blueF() * a + bottom.blueF() * (1 - a),
    )


@pytest.mark.parametrize("name", ["light", "dark"])
def test_code_and_quote_colours_are_readable_in_both_themes(name: str) -> None:
    from desktop.views.markdown import _code_shade

    palette = _palette(name == "dark")
    card_background = palette.color(palette.ColorRole.Window)  # an assistant card (app.qss)
    code_background = _over(_code_shade(palette), card_background)
    for kind, value in CODE_COLOURS[name].items():
        background = card_background if kind == "quote" else code_background
        assert _contrast(QColor(value), background) >= 4.5, (name, kind)


@pytest.mark.parametrize("name", ["light", "dark"])
def test_code_blocks_are_highlighted_with_the_themes_colours(qtbot, name: str) -> None:
    from desktop.views.markdown import render_markdown

    code = 'def area(r):\n    # a comment <b>\n    return 3.14 * r * r  # "text"\n'
    widget = card(qtbot, "x")
    render_markdown(
        widget.body.document(), f"Look:\n\n```python\n{code}```\n", _palette(name == "dark")
    )
    colours = CODE_COLOURS[name]
    seen = {}
    for text, fmt, block in fragments(widget):
        if block.hasProperty(QTextFormat.Property.BlockCodeLanguage) and text.strip():
            seen[text.strip()] = fmt.foreground().color().name()
            assert fmt.fontFixedPitch()
    assert seen["def"] == colours["keyword"] and seen["return"] == colours["keyword"]
    assert seen["area"] == colours["function"]
    assert seen["3.14"] == colours["number"]
    assert seen["# a comment <b>"] == colours["comment"]  # the angle brackets stay text
    assert "# a comment <b>" in widget.body.toPlainText()


def test_a_block_without_a_known_language_stays_plain_monospace(qtbot) -> None:
    widget = card(qtbot, "```nosuchlang\nlet x = 1\n```\n\n```\nplain\n```")
    for text, fmt, block in fragments(widget):
        if block.hasProperty(QTextFormat.Property.BlockCodeLanguage) and text.strip():
            assert fmt.fontFixedPitch()
            assert (
                fmt.foreground().style() == Qt.BrushStyle.NoBrush
                or fmt.foreground().color()
                == widget.palette().color(widget.palette().ColorRole.Text)
            )


def test_block_quotes_are_indented_tinted_and_coloured(qtbot) -> None:
    widget = card(qtbot, "Before.\n\n> Quoted *words* here.\n\nAfter.")
    quoted = [
        (t, f, b)
        for t, f, b in fragments(widget)
        if b.hasProperty(QTextFormat.Property.BlockQuoteLevel)
    ]
    assert quoted and "".join(t for t, _f, _b in quoted) == "Quoted words here."
    for _text, fmt, block in quoted:
        assert block.background().style() != Qt.BrushStyle.NoBrush
        assert block.leftMargin() >= 12
        assert fmt.foreground().color().name() in (
            CODE_COLOURS["light"]["quote"],
            CODE_COLOURS["dark"]["quote"],
        )
    plain = [b for t, _f, b in fragments(widget) if t == "After."]
    assert plain and plain[0].background().style() == Qt.BrushStyle.NoBrush


@pytest.mark.parametrize(
    "target", ["file:///etc/hostname", "javascript:alert(1)", "relative/page.html"]
)
def test_a_link_loopchat_will_not_open_is_not_drawn_as_a_link(qtbot, target: str) -> None:
    widget = card(qtbot, f"See [the file]({target}) and [the site](https://example.com/).")
    shown = widget.body.toPlainText()
    assert f"the file ({target})" in shown  # the address is there to read and copy
    anchors = [(t, f.anchorHref()) for t, f, _b in fragments(widget) if f.isAnchor()]
    assert anchors == [("the site", "https://example.com/")]
    tips = {f.toolTip() for t, f, _b in fragments(widget) if "the file" in t}
    assert any("opens only web links" in tip for tip in tips)
    # Hovering the words shows why (a real tooltip event on the card's text).
    found = widget.body.document().find("the file")
    rect = widget.body.cursorRect(found)
    viewport = widget.body.viewport()
    event = QHelpEvent(QEvent.Type.ToolTip, rect.center(), viewport.mapToGlobal(rect.center()))
    QApplication.sendEvent(viewport, event)
    qtbot.waitUntil(lambda: "opens only web links" in QToolTip.text(), timeout=2000)
    QToolTip.hideText()


def test_highlighting_needs_no_numpy_and_pygments_has_no_dependencies() -> None:
    import importlib.metadata

    required = importlib.metadata.requires("Pygments") or []
    assert [r for r in required if "extra ==" not in r] == []  # only optional extras
    script = (
        "import sys; sys.modules['numpy'] = None\n"
        "from desktop.views.markdown import code_tokens\n"
        "spans = code_tokens('def f():\\n    return 1\\n', 'python')\n"
        "assert spans and spans[0] == (0, 3, 'keyword'), spans\n"
        "assert 'numpy' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("Pygments>=2.15") for d in deps)


# -- C. timestamps, pinning, search that jumps --------------------------------------------------


def chat_in(store: ConversationStore, *texts: str, title: str = "") -> int:
    conv = store.create_conversation(title=title)
    for i, text in enumerate(texts):
        store.add_message(conv, "user" if i % 2 == 0 else "assistant", text)
    return conv


def test_hovering_a_message_shows_when_it_was_written(qtbot, home) -> None:
    win = make_window(qtbot, home)
    conv = chat_in(win.store, "What is a loop?", "A loop repeats.")
    saved = win.store.get_conversation(conv).messages
    win.refresh_conversations()
    win.open_conversation(conv)
    qtbot.waitUntil(lambda: len(win.chat.messages) == 2, timeout=5000)
    user, reply = win.chat.messages
    for widget, message in ((user, saved[0]), (reply, saved[1])):
        expected = written_tooltip(message.role, message.created_at)
        assert expected and widget.toolTip() == expected
        assert time.strftime("%Y", time.localtime(message.created_at)) in expected
        assert time.strftime("%H:%M", time.localtime(message.created_at)) in expected
    assert user.toolTip().startswith("Sent ") and reply.toolTip().startswith("Written ")
    # A real tooltip event over the text of the card shows it.
    viewport = reply.body.viewport()
    point = QPoint(5, 5)
    QApplication.sendEvent(
        viewport, QHelpEvent(QEvent.Type.ToolTip, point, viewport.mapToGlobal(point))
    )
    qtbot.waitUntil(lambda: QToolTip.text() == reply.toolTip(), timeout=2000)
    QToolTip.hideText()
    # A message written now (not read back) has its time too.
    fresh = win.chat.add_message("user", "new")
    fresh.set_written(time.time())
    assert fresh.toolTip().startswith("Sent ")
    win.close()


def test_version_3_database_is_upgraded_with_nothing_pinned(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:3])
    db.execute(
        "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (4, 'Old', 1.0, 2.0)"
    )
    db.execute(
        "INSERT INTO messages (id, conversation_id, position, role, content, created_at) "
        "VALUES (1, 4, 0, 'user', 'hello', 1.5)"
    )
    db.close()
    with ConversationStore(path) as store:
        assert store.recovery_notice is None
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 5
        (old,) = store.list_conversations()
        assert (old.id, old.title, old.pinned_at) == (4, "Old", None)
        assert [m.content for m in store.get_conversation(4).messages] == ["hello"]
        store.set_pinned(4, True)
    with ConversationStore(path) as store:  # persisted
        assert store.list_conversations()[0].pinned_at is not None


def test_pinned_conversations_stay_on_top_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with ConversationStore(path) as store:
        a = chat_in(store, "first chat")
        b = chat_in(store, "second chat")
        c = chat_in(store, "third chat")
        assert [x.id for x in store.list_conversations()] == [c, b, a]
        store.set_pinned(a, True)
        store.add_message(c, "assistant", "newer activity")
        assert [x.id for x in store.list_conversations()] == [a, c, b]
        store.set_pinned(b, True)
        assert [x.id for x in store.list_conversations()] == [b, a, c]
        assert [x.id for x in store.list_conversations("chat")][:2] == [b, a]
    with ConversationStore(path) as store:
        assert [x.id for x in store.list_conversations()] == [b, a, c]
        store.set_pinned(b, False)
        assert [x.id for x in store.list_conversations()] == [a, c, b]


def test_pin_from_the_context_menu_and_the_shortcut(qtbot, home) -> None:
    win = make_window(qtbot, home)
    older = chat_in(win.store, "older chat")
    newer = chat_in(win.store, "newer chat")
    win.refresh_conversations()
    lst = win.conversations
    assert lst.ids() == [newer, older] and lst.pinned() == []

    # Right-click the older row, choose "Pin to top".
    row = next(r for r in lst._rows() if r.data(Qt.ItemDataRole.UserRole) == older)
    where = lst.items.visualItemRect(row).center()

    def choose() -> None:
        menu = QApplication.activePopupWidget()
        assert isinstance(menu, QMenu)
        action = next(a for a in menu.actions() if a.text() == "Pin to top")
        assert action.shortcut().toString() == "Ctrl+Shift+P"
        action.trigger()
        menu.close()

    QTimer.singleShot(200, choose)
    lst.items.customContextMenuRequested.emit(where)
    qtbot.waitUntil(lambda: lst.pinned() == [older], timeout=3000)
    assert lst.ids() == [older, newer] and lst.headings()[0] == "Pinned"
    assert win.store.list_conversations()[0].pinned_at is not None

    # Ctrl+Shift+P on the highlighted row unpins it; again pins it.
    with qtbot.waitActive(win):  # shortcuts reach only the active window
        win.activateWindow()
    lst.items.setFocus()
    row = next(r for r in lst._rows() if r.data(Qt.ItemDataRole.UserRole) == older)
    lst.items.setCurrentItem(row)
    qtbot.keyClick(
        lst.items,
        Qt.Key.Key_P,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    qtbot.waitUntil(lambda: lst.pinned() == [], timeout=3000)
    assert lst.ids() == [newer, older] and "Pinned" not in lst.headings()
    row = next(r for r in lst._rows() if r.data(Qt.ItemDataRole.UserRole) == newer)
    lst.items.setCurrentItem(row)
    qtbot.keyClick(
        lst.items,
        Qt.Key.Key_P,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    qtbot.waitUntil(lambda: lst.pinned() == [newer], timeout=3000)
    win.close()


def test_search_opens_the_chat_at_the_matching_message(qtbot, home) -> None:
    win = make_window(qtbot, home)
    win.resize(1180, 760)
    texts = [f"Message number {i} about nothing in particular." for i in range(80)]
    texts[4] = "Here the zebracorn appears, once and early."
    target = chat_in(win.store, *texts)
    other = chat_in(win.store, "An unrelated chat.", "Yes.")
    win.refresh_conversations()
    win.open_conversation(other)
    qtbot.waitUntil(lambda: win.conversation_id == other, timeout=5000)

    lst = win.conversations
    lst.search.setFocus()
    qtbot.keyClicks(lst.search, "ZEBRACORN")
    qtbot.waitUntil(lambda: lst.ids() == [target], timeout=3000)
    row = lst._rows()[0]
    qtbot.mouseClick(
        lst.items.viewport(), Qt.MouseButton.LeftButton, pos=lst.items.visualItemRect(row).center()
    )
    qtbot.waitUntil(lambda: win.conversation_id == target, timeout=5000)
    qtbot.waitUntil(lambda: win.chat.revealed is not None, timeout=5000)
    found = win.chat.revealed
    assert "zebracorn" in found.text
    spots = found.body.extraSelections()
    assert len(spots) == 1 and spots[0].cursor.selectedText().lower() == "zebracorn"
    qtbot.wait(200)

    def in_view() -> bool:
        top = found.mapTo(win.chat.viewport(), QPoint(0, 0)).y()
        return 0 <= top and top + 20 <= win.chat.viewport().height()

    qtbot.waitUntil(in_view, timeout=3000)
    win.close()
