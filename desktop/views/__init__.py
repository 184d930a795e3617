"""Widgets of the main window, one per file; the window wires them together."""
