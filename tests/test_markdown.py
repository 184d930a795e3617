"""Replies are rendered as data: no raw HTML, no resources read, no link opened without asking.

Issue 11, item 9. Each test drives a real message card (`MessageWidget`) as the window shows it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import QObject, QPoint, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices, QGuiApplication, QTextCursor, QTextDocument, QTextFormat

from desktop.views.chat_view import MessageWidget

SECRET = "loopchat-secret-7f3a"


def card(qtbot, text: str, role: str = "assistant") -> MessageWidget:
    """A finished, shown card with `text` rendered the way a reopened reply is."""
    widget = MessageWidget(role, text)
    qtbot.addWidget(widget)
    widget.finish(text)
    widget.resize(600, 400)
    widget.show()
    qtbot.waitExposed(widget)
    QGuiApplication.processEvents()
    return widget


def shown(widget: MessageWidget) -> str:
    return widget.body.toPlainText()


# -- raw HTML ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "Use a List<String> here, then stop.",
        "#include <iostream> is the first line.",
        "a <script>alert(1)</script> b",
        '<img src="file:///etc/passwd"> after',
        "x <!-- hidden? --> y",
    ],
)
def test_angle_brackets_are_shown_literally(qtbot, line: str) -> None:
    """Everything after a `<` used to be swallowed as HTML."""
    widget = card(qtbot, f"Before.\n\n{line}\n\nAfter.")
    assert line in shown(widget)
    assert shown(widget).endswith("After.")


def test_note_cards_are_rendered_without_html_too(qtbot) -> None:
    widget = card(qtbot, "Kept: Map<K, V> and <b>tags</b>", role="note")
    assert "Map<K, V> and <b>tags</b>" in shown(widget)


# -- resources ---------------------------------------------------------------------------------


def image_resource(widget: MessageWidget, url: str):
    return widget.body.document().resource(QTextDocument.ResourceType.ImageResource, QUrl(url))


def test_images_and_style_sheets_never_read_local_files(qtbot, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_text(SECRET)
    url = secret.as_uri()
    widget = card(qtbot, f"![x]({url})\n\n![rel](secret.png)\n\ntext")
    widget.body.document().setBaseUrl(QUrl(tmp_path.as_uri() + "/"))
    assert image_resource(widget, url) is None
    assert image_resource(widget, "secret.png") is None
    sheet = QTextDocument.ResourceType.StyleSheetResource
    assert widget.body.document().resource(sheet, QUrl(url)) is None
    # The image is shown as its address, in words: the reader sees what was there.
    assert f"[image: {url}]" in shown(widget)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs or /dev/zero here")
@pytest.mark.timeout(30)
def test_dev_zero_and_a_fifo_neither_hang_nor_abort(qtbot, tmp_path: Path) -> None:
    """`/dev/zero` used to read until memory ran out; a FIFO blocked the GUI thread forever."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    text = f"![z](file:///dev/zero) ![f]({fifo.as_uri()}) ![w](file:///dev/zero)\n\ndone"
    widget = card(qtbot, text)
    assert shown(widget).endswith("done")
    assert image_resource(widget, "file:///dev/zero") is None
    assert image_resource(widget, fifo.as_uri()) is None


def test_data_urls_are_the_resources_allowed(qtbot) -> None:
    pixel = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
        "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    widget = card(qtbot, "text")
    data = image_resource(widget, pixel)
    assert data is not None and bytes(data).startswith(b"\x89PNG")
    assert bytes(image_resource(widget, "data:,hello%20there")) == b"hello there"


# -- links -------------------------------------------------------------------------------------


class Recorder(QObject):
    """Stands in for the OS URL handler (QDesktopServices.setUrlHandler): records, opens nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.opened.append(url.toString())


SCHEMES = ("http", "https", "file", "javascript", "vscode", "smb", "mailto")


@pytest.fixture
def os_handler():
    recorder = Recorder()
    for scheme in SCHEMES:
        QDesktopServices.setUrlHandler(scheme, recorder, "open")
    yield recorder
    for scheme in SCHEMES:
        QDesktopServices.unsetUrlHandler(scheme)


def click_text(qtbot, widget: MessageWidget, text: str) -> None:
    """A real mouse click in the middle of `text` in the card."""
    found = widget.body.document().find(text)
    assert not found.isNull(), text
    cursor = QTextCursor(widget.body.document())
    cursor.setPosition((found.selectionStart() + found.selectionEnd()) // 2)
    point = widget.body.cursorRect(cursor).center() + QPoint(0, 0)
    qtbot.mouseClick(widget.body.viewport(), Qt.MouseButton.LeftButton, pos=point)
    QGuiApplication.processEvents()


@pytest.mark.parametrize(
    "target",
    [
        "file:///etc/hostname",
        "javascript:alert(1)",
        "vscode://file/etc/passwd",
        "smb://server/share",
        "mailto:a@example.com",
        "relative/page.html",
    ],
)
def test_other_links_are_refused_and_never_navigate_the_card(
    qtbot, os_handler: Recorder, monkeypatch, target: str
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(
        "desktop.views.markdown.confirm_link", lambda parent, url: asked.append(url) or True
    )
    text = f"Before [press here please]({target}) after."
    widget = card(qtbot, text)
    before = shown(widget)
    click_text(qtbot, widget, "press here please")
    assert shown(widget) == before
    assert widget.body.source().isEmpty()
    assert os_handler.opened == []
    assert asked == []


def test_http_links_open_only_after_the_user_confirms(
    qtbot, os_handler: Recorder, monkeypatch
) -> None:
    answers: list[bool] = []
    asked: list[str] = []

    def confirm(parent, url: QUrl) -> bool:
        asked.append(url.toString())
        return answers.pop(0)

    monkeypatch.setattr("desktop.views.markdown.confirm_link", confirm)
    widget = card(qtbot, "See [the docs site](https://example.com/docs?q=1) for more.")
    before = shown(widget)
    widget.body.highlighted.emit(QUrl("https://example.com/docs?q=1"))  # hover: address shown
    widget.body.highlighted.emit(QUrl())

    answers.append(False)
    click_text(qtbot, widget, "the docs site")
    assert asked == ["https://example.com/docs?q=1"]
    assert os_handler.opened == []

    answers.append(True)
    click_text(qtbot, widget, "the docs site")
    assert os_handler.opened == ["https://example.com/docs?q=1"]
    assert shown(widget) == before and widget.body.source().isEmpty()


# -- code blocks -------------------------------------------------------------------------------

CODE = "#include <vector>\nint main() {\n    std::vector<int> v(" + "1, " * 80 + "1);\n}"


def test_code_blocks_are_monospace_shaded_wrapped_with_a_copy_link(qtbot) -> None:
    widget = card(qtbot, f"Here:\n\n```cpp\n{CODE}\n```\n\nand `inline<T>` too.")
    doc = widget.body.document()
    lines = []
    block = doc.begin()
    while block.isValid():
        fmt = block.blockFormat()
        if fmt.hasProperty(QTextFormat.Property.BlockCodeLanguage):
            lines.append(block.text())
            assert fmt.background().style() != Qt.BrushStyle.NoBrush
            assert not fmt.nonBreakableLines()  # the long line wraps inside the card
            assert block.begin().fragment().charFormat().fontFixedPitch()
            assert block.layout().lineCount() >= (2 if len(block.text()) > 200 else 1)
        block = block.next()
    assert "\n".join(lines) == CODE  # indentation and <angle brackets> kept
    assert widget.body.document().size().width() <= widget.body.viewport().width() + 1
    QGuiApplication.clipboard().clear()
    click_text(qtbot, widget, "Copy code")
    assert QGuiApplication.clipboard().text() == CODE
    assert "inline<T>" in shown(widget)
