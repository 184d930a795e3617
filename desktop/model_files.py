"""What a path handed to the window (dropped on it, or picked in File → Open model file…) opens.

A model folder or a GGUF file opens like any model; anything else is refused with a sentence that
says what would work, never passed to the engine to fail there. Plain Python: no Qt.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

WHAT_OPENS = "a GGUF model file (.gguf) or a model folder (Hugging Face or Meta layout)"


def model_to_open(paths: Iterable[str]) -> tuple[str | None, str]:
    """(the model to open, "") for the first path that is one; else (None, why not). Each
    sentence starts with a word of its own: the window capitalises a notice's first letter, and
    a file's name must stay as it is."""
    from engine.front_door import is_gguf

    paths = [p for p in paths if p]
    for path in paths:
        if Path(path).is_dir() or is_gguf(path):
            return str(Path(path)), ""
    if not paths:
        return None, f"Nothing to open: drop {WHAT_OPENS}."
    first = Path(paths[0])
    name = first.name or str(first)
    if not first.exists():
        return None, f"Loopchat cannot find {name}; it may have been moved or deleted."
    if first.suffix.lower() == ".gguf":
        return None, (
            f"Loopchat cannot open {name}: it is not a GGUF file (it does not start like one); it "
            "may be damaged or not fully downloaded."
        )
    return None, f"Loopchat cannot open {name}: it opens {WHAT_OPENS}."
