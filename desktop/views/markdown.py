"""Markdown from a model or an imported file, rendered as data and nothing more.

A reply is untrusted text: a model can be prompted into writing anything, and an imported export
can hold anything. Qt's defaults treat Markdown as a web page would: raw HTML is parsed (so
`List<String>` or `#include <iostream>` loses everything from the `<` on), images and CSS
`url(...)` are read from local paths when the card is laid out (`file:///dev/zero` aborts the
app, a FIFO hangs it) and clicked links go to the OS handler or replace the card. Here:

* **No raw HTML**: `MARKDOWN_FEATURES` is GitHub's dialect with `MarkdownNoHTML`, so a `<` is a
  character like any other.
* **No resources** but `data:` and `qrc:`: `SafeTextDocument.loadResource` decides, never Qt's
  fallback (which reads local files); images are shown as their address in words anyway.
* **Links only on request**: the browser neither follows nor opens links itself
  (`setOpenLinks(False)`, `setOpenExternalLinks(False)`); `handle_link` opens http(s) links in the
  web browser after `confirm_link` says yes, and refuses every other scheme. A link Loopchat will
  not open (`file:`, `javascript:`, a relative address…) is not drawn as a link at all: its words
  stay, followed by its address in brackets, with a tooltip saying why (a link that looks
  clickable and silently does nothing reads as a broken app).
* **Code blocks** are monospace on a shaded background, wrapped (cards never scroll sideways), with
  a "Copy code" link above each that copies just that block. A block that names its language
  (```` ```python ````) is coloured by Pygments' lexer for it, with the theme's colours
  (`desktop.theme.CODE_COLOURS`); Pygments only splits the text into tokens, it formats nothing.
* **Block quotes** are indented on a tinted background, in the theme's quote colour.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import unquote_to_bytes

from PySide6.QtCore import QByteArray, QFile, QIODevice, QSizeF, Qt, QUrl
from PySide6.QtGui import (
    QColor,
    QCursor,
    QDesktopServices,
    QFont,
    QFontDatabase,
    QGuiApplication,
    QPalette,
    QPyTextObject,
    QTextBlock,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextFormat,
)
from PySide6.QtWidgets import QMessageBox, QTextBrowser, QToolTip, QWidget

from desktop.theme import reply_colours

log = logging.getLogger(__name__)

MARKDOWN_FEATURES = (
    QTextDocument.MarkdownFeature.MarkdownDialectGitHub
    | QTextDocument.MarkdownFeature.MarkdownNoHTML
)
"""GitHub-flavoured Markdown (tables, strikethrough, task lists, autolinks), raw HTML as text."""

RESOURCE_SCHEMES = frozenset({"data", "qrc"})
"""The only places a document may load an image or style sheet from (nothing on disk or net)."""

OPENABLE_SCHEMES = frozenset({"http", "https"})
"""Links that may be handed to the web browser, after the user confirms."""

COPY_SCHEME = "loopchat-copy"
"""`loopchat-copy:N` copies the card's code block N (the "Copy code" links this module adds)."""

MAX_DATA_URL_BYTES = 8 * 1024 * 1024
"""A `data:` image larger than this is not decoded (a reply must not be able to stall a card)."""

_CODE = QTextFormat.Property.BlockCodeLanguage
_QUOTE = QTextFormat.Property.BlockQuoteLevel
MAX_HIGHLIGHT_CHARS = 20_000
"""A longer code block is shown uncoloured (colouring must not hold the GUI on a huge reply)."""
NOT_OPENED_TIP = (
    "Loopchat opens only web links (http and https), after asking; this address is shown as "
    "text. Copy it if you want to open it yourself."
)
_COPY_HEADER = QTextFormat.Property.UserProperty + 101  # marks a "Copy code" header block


# -- resources ---------------------------------------------------------------------------------


def load_safe_resource(url: QUrl) -> QByteArray | None:
    """The bytes behind `url` if it is `data:` or `qrc:`, else None (nothing is read)."""
    scheme = url.scheme().lower()
    if scheme not in RESOURCE_SCHEMES:
        log.debug("not loading %s resource %s", scheme or "relative", url.toString()[:200])
        return None
    if scheme == "qrc":
        file = QFile(":" + url.path())
        if not file.open(QIODevice.OpenModeFlag.ReadOnly):
            return None
        try:
            return file.readAll()
        finally:
            file.close()
    return _decode_data_url(url.toString(QUrl.ComponentFormattingOption.FullyEncoded))


def _decode_data_url(text: str) -> QByteArray | None:
    """RFC 2397 `data:[<type>][;base64],<data>`; None when malformed or too large."""
    head, sep, payload = text[len("data:") :].partition(",")
    if not sep or len(payload) > MAX_DATA_URL_BYTES * 4 // 3 + 4:
        return None
    try:
        raw = unquote_to_bytes(payload)
        if head.lower().endswith(";base64"):
            raw = base64.b64decode(raw, validate=False)
    except ValueError:
        return None
    return QByteArray(raw) if len(raw) <= MAX_DATA_URL_BYTES else None


class SafeTextDocument(QTextDocument):
    """A QTextDocument that loads resources only from `data:` and `qrc:`.

    Overriding here, not in the browser, matters: `QTextDocument::loadResource` itself falls back
    to reading any local file when its parent did not supply the resource.
    """

    def loadResource(self, type_: int, url: QUrl):  # noqa: N802 - Qt API
        return load_safe_resource(url)


class _NoImage(QPyTextObject):
    """The layout's image handler: takes no space, draws nothing, reads nothing.

    Needed besides `loadResource`: Qt's own image handler, when the resource comes back empty,
    "tries direct loading" with `QImage.load(path)`, which reads `file:` paths (a FIFO blocks).
    `render_markdown` then shows each image as its address in words.
    """

    def intrinsicSize(self, doc, pos, fmt) -> QSizeF:  # noqa: N802 - Qt API
        return QSizeF(0, 0)

    def drawObject(self, painter, rect, doc, pos, fmt) -> None:  # noqa: N802 - Qt API
        pass


# -- links -------------------------------------------------------------------------------------


def confirm_link(parent: QWidget | None, url: QUrl) -> bool:
    """Ask before a link leaves the app. Tests replace this module attribute to answer for the
    user; `handle_link` looks it up at call time."""
    shown = url.toString(QUrl.ComponentFormattingOption.FullyEncoded)  # punycode: no look-alikes
    if len(shown) > 300:
        shown = shown[:300] + "…"
    answer = QMessageBox.question(
        parent,
        "Open link?",
        f"Open this link in your web browser?\n\n{shown}",
        QMessageBox.StandardButton.Open | QMessageBox.StandardButton.Cancel,
        QMessageBox.StandardButton.Cancel,
    )
    return answer == QMessageBox.StandardButton.Open


def handle_link(browser: QTextBrowser, url: QUrl) -> bool:
    """What a click on a link in a card does; True if something happened.

    The card itself never changes. `loopchat-copy:N` copies code block N; http(s) links with a
    host open in the web browser once the user confirms; any other scheme (file:, javascript:,
    vscode:, smb:, relative addresses…) is refused.
    """
    scheme = url.scheme().lower()
    if scheme == COPY_SCHEME:
        return copy_code_block(browser.document(), url.path())
    if scheme not in OPENABLE_SCHEMES or not url.isValid() or not url.host():
        log.info("refused to open a %s link", scheme or "relative")
        return False
    if not confirm_link(browser, url):
        return False
    return QDesktopServices.openUrl(url)


def secure_browser(browser: QTextBrowser) -> SafeTextDocument:
    """Give `browser` a SafeTextDocument and route its links through `handle_link`.

    Call before anything else touches `browser.document()` (it replaces the document).
    """
    document = SafeTextDocument(browser)
    browser.setDocument(document)
    no_image = _NoImage(document)
    document.documentLayout().registerHandler(QTextFormat.ObjectTypes.ImageObject, no_image)
    browser.setOpenLinks(False)
    browser.setOpenExternalLinks(False)
    browser.anchorClicked.connect(lambda url: handle_link(browser, url))
    browser.highlighted.connect(lambda url: _show_address(browser, url))
    return document


def _show_address(browser: QTextBrowser, url: QUrl) -> None:
    """Hovering a link shows where it goes (a link's words may say something else)."""
    if url.isEmpty() or url.scheme().lower() == COPY_SCHEME:
        QToolTip.hideText()
        return
    shown = url.toString(QUrl.ComponentFormattingOption.FullyEncoded)[:300]
    QToolTip.showText(QCursor.pos(), shown, browser)


# -- rendering ---------------------------------------------------------------------------------


def render_markdown(document: QTextDocument, text: str, palette: QPalette | None = None) -> None:
    """Show `text` as Markdown in `document`, safely (see the module docstring)."""
    palette = palette or QGuiApplication.palette()
    document.setMarkdown(text, MARKDOWN_FEATURES)
    _replace_images(document)
    _unlink_unopenable(document)
    shade = _code_shade(palette)
    colours = reply_colours(palette)
    _style_quotes(document, palette, colours["quote"])
    _style_inline_code(document, shade)
    _style_code_blocks(document, shade, colours)


def _code_shade(palette: QPalette) -> QColor:
    """A background a little darker (light theme) or lighter (dark theme) than the card."""
    shade = QColor(palette.color(QPalette.ColorRole.Text))
    shade.setAlpha(22)
    return shade


def _blocks(document: QTextDocument):
    block = document.begin()
    while block.isValid():
        yield block
        block = block.next()


def _replace_images(document: QTextDocument) -> None:
    """Each image becomes the words `[image: address]`: nothing to load, nothing hidden."""
    found: list[tuple[int, int, str]] = []
    for block in _blocks(document):
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            fmt = fragment.charFormat()
            if fmt.isImageFormat():
                name = fmt.toImageFormat().name()
                found.append((fragment.position(), fragment.length(), name))
            it += 1
    for position, length, name in reversed(found):
        cursor = QTextCursor(document)
        cursor.setPosition(position)
        cursor.setPosition(position + length, QTextCursor.MoveMode.KeepAnchor)
        plain = QTextCharFormat()
        plain.setFontItalic(True)
        cursor.insertText(f"[image: {name[:200]}]", plain)


def openable(url: QUrl) -> bool:
    """A link `handle_link` may open (after asking): http(s) with a host."""
    return url.scheme().lower() in OPENABLE_SCHEMES and url.isValid() and bool(url.host())


def _unlink_unopenable(document: QTextDocument) -> None:
    """Links Loopchat would refuse become plain words followed by their address in brackets."""
    links: list[list] = []  # [start, end, href, words]: touching fragments of one link merged
    for block in _blocks(document):
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            fmt = fragment.charFormat()
            href = fmt.anchorHref() if fmt.isAnchor() else ""
            if href and not openable(QUrl(href)):
                start, end = fragment.position(), fragment.position() + fragment.length()
                if links and links[-1][1] == start and links[-1][2] == href:
                    links[-1][1] = end
                    links[-1][3] += fragment.text()
                else:
                    links.append([start, end, href, fragment.text()])
            it += 1
    for start, end, href, words in reversed(links):
        cursor = QTextCursor(document)
        for position in range(start, end):  # per character: a link may mix bold and plain
            cursor.setPosition(position)
            cursor.setPosition(position + 1, QTextCursor.MoveMode.KeepAnchor)
            fmt = cursor.charFormat()
            for prop in (
                QTextFormat.Property.IsAnchor,
                QTextFormat.Property.AnchorHref,
                QTextFormat.Property.AnchorName,
                QTextFormat.Property.ForegroundBrush,
                QTextFormat.Property.TextUnderlineStyle,
                QTextFormat.Property.FontUnderline,
            ):
                fmt.clearProperty(prop)
            fmt.setToolTip(NOT_OPENED_TIP)
            cursor.setCharFormat(fmt)
        if words.strip() != href.strip():
            cursor.setPosition(end)
            address = href if len(href) <= 200 else href[:200] + "…"
            plain = cursor.charFormat()
            plain.setFontWeight(QFont.Weight.Normal)
            plain.setFontItalic(False)
            cursor.insertText(f" ({address})", plain)


def _style_quotes(document: QTextDocument, palette: QPalette, colour: QColor) -> None:
    """Block quotes: indented on a light tint of the theme's highlight, in the quote colour."""
    tint = QColor(palette.color(QPalette.ColorRole.Highlight))
    tint.setAlpha(28)
    for block in _blocks(document):
        fmt = block.blockFormat()
        if not fmt.hasProperty(_QUOTE) or fmt.intProperty(_QUOTE) <= 0:
            continue
        fmt.setBackground(tint)
        fmt.setLeftMargin(max(fmt.leftMargin(), 12.0))
        fmt.setRightMargin(4)
        cursor = QTextCursor(block)
        cursor.setBlockFormat(fmt)
        cursor.movePosition(QTextCursor.MoveOperation.EndOfBlock, QTextCursor.MoveMode.KeepAnchor)
        text = QTextCharFormat()
        text.setForeground(colour)
        cursor.mergeCharFormat(text)


def _style_inline_code(document: QTextDocument, shade: QColor) -> None:
    """`code` spans: monospace (Qt sets it) on the code background."""
    for block in _blocks(document):
        if block.blockFormat().hasProperty(_CODE):
            continue
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            fmt = fragment.charFormat()
            if fmt.fontFixedPitch() or fmt.font().fixedPitch():
                cursor = QTextCursor(document)
                cursor.setPosition(fragment.position())
                cursor.setPosition(
                    fragment.position() + fragment.length(), QTextCursor.MoveMode.KeepAnchor
                )
                extra = QTextCharFormat()
                extra.setBackground(shade)
                cursor.mergeCharFormat(extra)
            it += 1


def code_blocks(document: QTextDocument) -> list[str]:
    """The text of each code block, in order (consecutive code lines form one block)."""
    blocks: list[str] = []
    previous_was_code = False
    for block in _blocks(document):
        is_code = block.blockFormat().hasProperty(_CODE)
        if is_code and previous_was_code:
            blocks[-1] += "\n" + block.text()
        elif is_code:
            blocks.append(block.text())
        previous_was_code = is_code
    return blocks


def copy_code_block(document: QTextDocument, number: str) -> bool:
    """Put code block `number` on the clipboard; False if there is no such block."""
    blocks = code_blocks(document)
    if not number.isdigit() or int(number) >= len(blocks):
        return False
    QGuiApplication.clipboard().setText(blocks[int(number)])
    return True


def _style_code_blocks(
    document: QTextDocument, shade: QColor, colours: dict[str, QColor] | None = None
) -> None:
    """Shade, wrap and colour code lines, and put a "Copy code" link above each block."""
    starts: list[int] = []
    previous_was_code = False
    mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    for block in _blocks(document):
        fmt = block.blockFormat()
        is_code = fmt.hasProperty(_CODE)
        if is_code:
            fmt.setBackground(shade)
            fmt.setNonBreakableLines(False)  # wrap: a card is as wide as the window, no wider
            fmt.setLeftMargin(4)
            fmt.setRightMargin(4)
            cursor = QTextCursor(block)
            cursor.setBlockFormat(fmt)
            cursor.movePosition(
                QTextCursor.MoveOperation.EndOfBlock, QTextCursor.MoveMode.KeepAnchor
            )
            font = QTextCharFormat()
            font.setFontFamilies([mono.family()])
            font.setFontFixedPitch(True)
            cursor.mergeCharFormat(font)
            if not previous_was_code:
                starts.append(block.blockNumber())
        previous_was_code = is_code
    if colours:
        for number, text in zip(starts, code_blocks(document), strict=True):
            first = document.findBlockByNumber(number)
            language = str(first.blockFormat().property(_CODE) or "")
            highlight_code(document, first.position(), text, language, colours)
    for number in reversed(range(len(starts))):
        _insert_copy_header(document.findBlockByNumber(starts[number]), number, shade)


def _insert_copy_header(first: QTextBlock, number: int, shade: QColor) -> None:
    """A right-aligned "Copy code" link in a shaded line just above the block's first line."""
    code_format = first.blockFormat()
    cursor = QTextCursor(first)
    cursor.insertBlock(code_format, first.charFormat())  # the code moves down one block
    code_format.setTopMargin(0)  # the header takes the block's space above
    cursor.setBlockFormat(code_format)
    header = QTextBlockFormat()
    header.setBackground(shade)
    header.setLeftMargin(4)
    header.setRightMargin(4)
    header.setTopMargin(code_format.topMargin())
    header.setProperty(_COPY_HEADER, True)
    header.setAlignment(Qt.AlignmentFlag.AlignRight)
    cursor.movePosition(QTextCursor.MoveOperation.PreviousBlock)
    cursor.setBlockFormat(header)
    link = QTextCharFormat()
    link.setAnchor(True)
    link.setAnchorHref(f"{COPY_SCHEME}:{number}")
    link.setFontPointSize(max(QFont().pointSizeF() - 1, 6))
    link.setFontUnderline(False)
    link.setForeground(QGuiApplication.palette().color(QPalette.ColorRole.Link))
    link.setToolTip("Copy this code block")
    cursor.insertText("Copy code", link)


# -- syntax colours ----------------------------------------------------------------------------

_TOKEN_KINDS = (  # most specific first: Name.Function before Name.Builtin before Keyword…
    ("Comment", "comment"),
    ("Literal.String", "string"),
    ("Literal.Number", "number"),
    ("Keyword.Type", "class"),
    ("Keyword", "keyword"),
    ("Operator.Word", "keyword"),
    ("Name.Function", "function"),
    ("Name.Class", "class"),
    ("Name.Builtin", "builtin"),
    ("Name.Decorator", "decorator"),
    ("Name.Tag", "tag"),
    ("Name.Attribute", "attribute"),
    ("Name.Exception", "class"),
    ("Generic.Deleted", "error"),
    ("Generic.Inserted", "string"),
    ("Generic.Heading", "keyword"),
    ("Error", "error"),
)
"""Pygments token types (as dotted names) to the kinds `desktop.theme.CODE_COLOURS` colours."""


def token_kind(token_type) -> str | None:
    """The colour kind of a Pygments token type, or None to leave it in the text colour."""
    name = str(token_type).removeprefix("Token.")
    for prefix, kind in _TOKEN_KINDS:
        if name == prefix or name.startswith(prefix + "."):
            return kind
    return None


def code_tokens(text: str, language: str) -> list[tuple[int, int, str]] | None:
    """(start, length, kind) of each coloured token of `text` in `language`; None when the
    language is unknown (or not given), the block too long, or the lexer changed the text."""
    name = language.strip().split(maxsplit=1)[0].lower() if language.strip() else ""
    if not name or len(text) > MAX_HIGHLIGHT_CHARS:
        return None
    from pygments.lexers import get_lexer_by_name  # imported on the first code block only
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(name, stripnl=False, ensurenl=False, stripall=False)
    except ClassNotFound:
        return None
    spans: list[tuple[int, int, str]] = []
    at = 0
    try:
        for token_type, value in lexer.get_tokens(text):
            kind = token_kind(token_type)
            if kind is not None and value:
                spans.append((at, len(value), kind))
            at += len(value)
    except Exception:  # noqa: BLE001 - a lexer bug must not stop a reply from showing
        log.warning("Pygments could not colour a %s block", name, exc_info=True)
        return None
    return spans if at == len(text) else None


def highlight_code(
    document: QTextDocument, start: int, text: str, language: str, colours: dict[str, QColor]
) -> bool:
    """Colour the code block whose text `text` begins at `start` in `document`; False when it
    stays uncoloured (see `code_tokens`). Lines of a block are consecutive text blocks, each
    separated by one character, so an offset in `text` is an offset in the document."""
    spans = code_tokens(text, language)
    if not spans:
        return False
    cursor = QTextCursor(document)
    for offset, length, kind in spans:
        colour = colours.get(kind)
        if colour is None:
            continue
        cursor.setPosition(start + offset)
        cursor.setPosition(start + offset + length, QTextCursor.MoveMode.KeepAnchor)
        fmt = QTextCharFormat()
        fmt.setForeground(colour)
        if kind == "comment":
            fmt.setFontItalic(True)
        cursor.mergeCharFormat(fmt)
    return True
