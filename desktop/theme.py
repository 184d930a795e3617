"""Light and dark palettes. By default Loopchat follows the system; LOOPCHAT_THEME or the
View menu's setting forces one (useful on desktops whose Qt style ignores the system scheme)."""

from __future__ import annotations

import logging

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from desktop.settings_values import setting_str

log = logging.getLogger(__name__)

THEMES = ("system", "light", "dark")


def _palette(dark: bool) -> QPalette:
    p = QPalette()
    if dark:
        colors = {
            QPalette.ColorRole.Window: "#1f2126",
            QPalette.ColorRole.WindowText: "#e6e8ee",
            QPalette.ColorRole.Base: "#17191d",
            QPalette.ColorRole.AlternateBase: "#262a33",
            QPalette.ColorRole.Text: "#e6e8ee",
            QPalette.ColorRole.Button: "#2a2e37",
            QPalette.ColorRole.ButtonText: "#e6e8ee",
            QPalette.ColorRole.Highlight: "#5b7cfa",
            QPalette.ColorRole.HighlightedText: "#ffffff",
            QPalette.ColorRole.ToolTipBase: "#2a2e37",
            QPalette.ColorRole.ToolTipText: "#e6e8ee",
            QPalette.ColorRole.PlaceholderText: "#8a909c",
            QPalette.ColorRole.Mid: "#8a909c",
            QPalette.ColorRole.Midlight: "#343946",
            QPalette.ColorRole.Link: "#8fa8ff",
        }
    else:
        colors = {
            QPalette.ColorRole.Window: "#f6f7f9",
            QPalette.ColorRole.WindowText: "#1d2028",
            QPalette.ColorRole.Base: "#ffffff",
            QPalette.ColorRole.AlternateBase: "#eef2ff",
            QPalette.ColorRole.Text: "#1d2028",
            QPalette.ColorRole.Button: "#ffffff",
            QPalette.ColorRole.ButtonText: "#1d2028",
            QPalette.ColorRole.Highlight: "#4f6ef7",
            QPalette.ColorRole.HighlightedText: "#ffffff",
            QPalette.ColorRole.ToolTipBase: "#ffffff",
            QPalette.ColorRole.ToolTipText: "#1d2028",
            QPalette.ColorRole.PlaceholderText: "#8a909c",
            QPalette.ColorRole.Mid: "#7d8491",
            QPalette.ColorRole.Midlight: "#dfe3ea",
            QPalette.ColorRole.Link: "#3454e0",
        }
    for role, value in colors.items():
        p.setColor(role, QColor(value))
    for role in (
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
        QPalette.ColorRole.WindowText,
    ):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#8a909c"))
    return p


THEME_KEY = "view/theme"
"""Where the View → Theme choice is kept in the settings."""


def saved_theme(settings) -> str:
    """The theme chosen in View → Theme ("system" unless one of THEMES was saved)."""
    value = setting_str(settings, THEME_KEY, "system")
    if value not in THEMES:
        log.warning("settings: %s=%r is not one of %s; using system", THEME_KEY, value, THEMES)
        return "system"
    return value


def apply_theme(app: QApplication, theme: str) -> None:
    """Fusion with our palette for "light"/"dark"; for "system", the palette the platform gives,
    made consistent by deciding light or dark from the system colour scheme."""
    from PySide6.QtCore import Qt

    app.setStyle("Fusion")
    if theme not in ("light", "dark"):
        scheme = app.styleHints().colorScheme()
        theme = "dark" if scheme == Qt.ColorScheme.Dark else "light"
    app.setPalette(_palette(theme == "dark"))
    if app.styleSheet():  # palette(...) colours in the style sheet are read when it is set
        app.setStyleSheet(app.styleSheet())


# -- colours of rendered replies (code and quotes) ---------------------------------------------
# Chosen per theme rather than taken from a Pygments style: a Pygments style assumes its own
# background, and a card's code shade is a tint of the theme's. Each colour keeps a contrast of
# at least 4.5:1 (WCAG AA) on the shaded code background of its theme (tests/test_ux_round3_peers).

CODE_COLOURS = {
    "light": {
        "keyword": "#8629b0",
        "string": "#2c6e1c",
        "comment": "#5a616b",
        "number": "#9a4500",
        "function": "#2349b8",
        "class": "#7a4f00",
        "builtin": "#0b6577",
        "decorator": "#9a4500",
        "tag": "#2349b8",
        "attribute": "#7a4f00",
        "error": "#b3242a",
        "quote": "#3a414d",
    },
    "dark": {
        "keyword": "#d6a2ff",
        "string": "#a3d98e",
        "comment": "#9aa3b1",
        "number": "#f3b56f",
        "function": "#97b8ff",
        "class": "#e8c37f",
        "builtin": "#74d4e6",
        "decorator": "#f3b56f",
        "tag": "#97b8ff",
        "attribute": "#e8c37f",
        "error": "#ff8585",
        "quote": "#c7ccd6",
    },
}
"""Syntax colours by kind of token (views/markdown.py maps Pygments' token types to these
kinds), and the text colour of block quotes, for each theme."""


def is_dark(palette: QPalette) -> bool:
    """The palette is a dark theme (its text is lighter than its background)."""
    text = palette.color(QPalette.ColorRole.Text).lightnessF()
    base = palette.color(QPalette.ColorRole.Base).lightnessF()
    return text > base


def reply_colours(palette: QPalette) -> dict[str, QColor]:
    """CODE_COLOURS of the theme `palette` belongs to, as QColors."""
    chosen = CODE_COLOURS["dark" if is_dark(palette) else "light"]
    return {kind: QColor(value) for kind, value in chosen.items()}
