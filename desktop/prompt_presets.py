"""Named system prompts the user keeps ("Pirate", "Terse reviewer"), and the default for new chats.

A conversation has its own system prompt (saved with it); these are the two things kept beside
it in the settings file, like every other setting: the prompt a new chat starts with, and the
presets a user can pick from. Kept as a QSettings array so a hand-edited loopchat.ini stays
readable; a damaged entry is skipped (desktop.settings_values), never fatal.
"""

from __future__ import annotations

from typing import Any

from desktop.settings_values import setting_str

DEFAULT_SYSTEM_PROMPT_KEY = "chat/system_prompt"
"""The system prompt a new chat starts with."""
PRESETS_KEY = "chat/system_prompt_presets"
"""The array of named presets: each entry has `name` and `text`."""


def default_prompt(settings: Any) -> str:
    return setting_str(settings, DEFAULT_SYSTEM_PROMPT_KEY, "")


def set_default_prompt(settings: Any, text: str) -> None:
    settings.setValue(DEFAULT_SYSTEM_PROMPT_KEY, text)
    settings.sync()


def load_presets(settings: Any) -> dict[str, str]:
    """The saved presets, name → text, sorted by name (case-insensitively)."""
    found: dict[str, str] = {}
    count = settings.beginReadArray(PRESETS_KEY)
    try:
        for i in range(count):
            settings.setArrayIndex(i)
            name = setting_str(settings, "name", "").strip()
            if name:
                found[name] = setting_str(settings, "text", "")
    finally:
        settings.endArray()
    return dict(sorted(found.items(), key=lambda item: item[0].casefold()))


def _write(settings: Any, presets: dict[str, str]) -> None:
    settings.remove(PRESETS_KEY)  # a shorter array must not keep the old tail's entries
    settings.beginWriteArray(PRESETS_KEY, len(presets))
    for i, (name, text) in enumerate(presets.items()):
        settings.setArrayIndex(i)
        settings.setValue("name", name)
        settings.setValue("text", text)
    settings.endArray()
    settings.sync()


def save_preset(settings: Any, name: str, text: str) -> None:
    """Keep `text` under `name` (replacing a preset of that name)."""
    presets = load_presets(settings)
    presets[name.strip()] = text
    _write(settings, dict(sorted(presets.items(), key=lambda item: item[0].casefold())))


def delete_preset(settings: Any, name: str) -> None:
    presets = load_presets(settings)
    if presets.pop(name, None) is not None:
        _write(settings, presets)
