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
