"""A damaged settings file never stops the app: each bad value falls back to its default.

The values are written as a person editing loopchat.ini by hand (or a half-written file) leaves
them: QSettings' INI format reads every number back as a string, and an unquoted `1, 2` as a list.
The window is then built from `desktop.app.create_settings()`, as `loopchat` starts it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.views.sampling_panel import DEFAULTS
from engine.events import SamplingParams

SEED_MAX = 2**63 - 1
"""QSettings keeps a signed 64-bit int: the panel's largest seed."""

BAD_VALUES = [
    ("sampling", "top_k", "abc"),
    ("sampling", "top_k", "1, 2"),
    ("sampling", "temperature", "warm"),
    ("sampling", "temperature", "nan"),
    ("sampling", "top_p", "1, 2"),
    ("sampling", "max_new_tokens", "1.5"),
    ("sampling", "max_new_tokens", "99999999999999999999999"),
    ("sampling", "report_top", "²"),
    ("sampling", "seed", "18446744073709551616"),
    ("window", "geometry", "hello"),
    ("window", "splitter", "1, 2"),
    ("window", "side", "abc"),
    ("view", "theme", "1, 2"),
]


def write_ini(home: Path, text: str) -> None:
    """The settings file `desktop.app.create_settings()` reads under this test's LOOPCHAT_HOME."""
    config = home / "home" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "loopchat.ini").write_text(text, encoding="utf-8")


def start_window(qtbot):
    """The window as `loopchat` builds it: settings from the app's own file, theme read."""
    from desktop.app import create_settings
    from desktop.main_window import MainWindow
    from desktop.theme import saved_theme

    settings = create_settings()
    assert saved_theme(settings) in ("system", "light", "dark")
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.show()
    return win


def panel_values(win) -> dict:
    s = win.sampling
    seed_text = s.seed.text()
    return {
        "temperature": s.temperature.value(),
        "top_k": s.top_k.value(),
        "top_p": s.top_p.value(),
        "min_p": s.min_p.value(),
        "repetition_penalty": s.repetition_penalty.value(),
        "max_new_tokens": s.max_new_tokens.value(),
        "seed": int(seed_text) if seed_text else -1,
        "report_top": s.report_top.value(),
    }


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_saved_value_falls_back_to_its_default(
    qtbot, home: Path, caplog, section: str, key: str, value: str
) -> None:
    write_ini(home, f"[{section}]\n{key}={value}\n")
    with caplog.at_level(logging.WARNING):
        win = start_window(qtbot)
    assert panel_values(win) == pytest.approx(DEFAULTS)
    assert any(f"{section}/{key}" in r.getMessage() for r in caplog.records), caplog.text
    win.close()  # saving the layout on close works after a bad one was read


def test_every_bad_value_at_once_still_starts(qtbot, home: Path) -> None:
    """One damaged file with all of them, plus good values that must be kept."""
    sections: dict[str, list[str]] = {}
    for section, key, value in BAD_VALUES:
        sections.setdefault(section, []).append(f"{key}={value}")
    sections["sampling"].append("min_p=0.2")
    write_ini(home, "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    win = start_window(qtbot)
    assert win.sampling.min_p.value() == pytest.approx(0.2)
    assert win.sampling.top_k.value() == DEFAULTS["top_k"]
    assert win.splitter.sizes()[1] > 0  # the chat column is there


def test_seed_beyond_64_bits_is_refused_in_the_field(qtbot, home: Path) -> None:
    """Typing 2**64 used to raise OverflowError on save (QSettings keeps a signed 64-bit int)."""
    win = start_window(qtbot)
    seed = win.sampling.seed
    seed.setFocus()
    qtbot.keyClicks(seed, str(2**64))
    qtbot.keyClick(seed, Qt.Key.Key_Return)
    typed = int(seed.text())
    assert 0 <= typed <= SEED_MAX
    win.settings.sync()
    assert int(win.settings.value("sampling/seed")) == typed
    # Text put there some other way (a paste bypasses nothing, setText does) is never used as is.
    for text in (str(2**64), "²", "-5", "1e3"):
        seed.setText(text)
        SamplingParams(**win.sampling.values()["params"]).validate()
        seed.editingFinished.emit()  # saving it raises nothing either
    win.close()


def test_huge_saved_seed_reads_back_as_random(qtbot, home: Path) -> None:
    write_ini(home, f"[sampling]\nseed={2**64}\n")
    win = start_window(qtbot)
    assert win.sampling.seed.text() == ""
    assert win.sampling.values()["params"]["seed"] is None
