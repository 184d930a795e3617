"""Typed reads of saved settings that survive a damaged settings file.

loopchat.ini is a text file people edit by hand, and QSettings' INI format hands back whatever it
holds: every number as a string, an unquoted `1, 2` as a list, a word where bytes were saved. A
value read at start-up that cannot be used would stop the app at every start, with the file
still there. So every reader goes through these functions: a value of the wrong kind or outside
the range the widget takes falls back to the default with one logged warning naming the key.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from PySide6.QtCore import QByteArray

log = logging.getLogger(__name__)


def _refuse(key: str, raw: Any, default: Any, wanted: str) -> Any:
    log.warning("settings: %s=%r is not %s; using %r", key, raw, wanted, default)
    return default


def setting_int(settings: Any, key: str, default: int, lo: int, hi: int) -> int:
    """The whole number saved under `key` if it is one from `lo` to `hi`, else `default`.

    Strict: ASCII digits with an optional sign ("1.5", "²" and "1, 2" are refused, where int()
    would raise or take "²" as 2).
    """
    raw = settings.value(key)
    if raw is None:
        return default
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and _is_int_text(raw.strip()):
        value = int(raw.strip())
    else:
        return _refuse(key, raw, default, f"a whole number from {lo} to {hi}")
    if not lo <= value <= hi:
        return _refuse(key, raw, default, f"a whole number from {lo} to {hi}")
    return value


def _is_int_text(text: str) -> bool:
    digits = text[1:] if text[:1] in "+-" else text
    # A length cap keeps int() off absurd strings (it refuses over 4300 digits with an error).
    return 0 < len(digits) <= 30 and digits.isascii() and digits.isdigit()


def setting_float(settings: Any, key: str, default: float, lo: float, hi: float) -> float:
    """The finite number saved under `key` if it lies from `lo` to `hi`, else `default`."""
    raw = settings.value(key)
    if raw is None:
        return default
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str) and raw.isascii():
        try:
            value = float(raw)
        except ValueError:
            value = None
    if value is None or not math.isfinite(value) or not lo <= value <= hi:
        return _refuse(key, raw, default, f"a number from {lo:g} to {hi:g}")
    return value


def setting_bytes(settings: Any, key: str) -> QByteArray | None:
    """The bytes saved under `key` (window geometry, splitter state), or None if there are none
    or something else is there; Qt itself ignores bytes it cannot restore from."""
    raw = settings.value(key)
    if raw is None:
        return None
    if isinstance(raw, QByteArray):
        return raw
    if isinstance(raw, bytes | bytearray):
        return QByteArray(bytes(raw))
    return _refuse(key, raw, None, "saved window state (bytes)")


def setting_str(settings: Any, key: str, default: str) -> str:
    """The text saved under `key`, else `default`.

    An unquoted value with commas, typed into the file by hand, reads back as a list of its
    parts: they are joined again, so `Be brief, be kind` means what its author meant.
    """
    raw = settings.value(key)
    if raw is None:
        return default
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(isinstance(part, str) for part in raw):
        return ", ".join(raw)
    return _refuse(key, raw, default, "text")
