"""Loopchat's desktop app (PySide6). Nothing here imports torch on the GUI thread."""
