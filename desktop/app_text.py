"""Engine errors worded for the window: what to click, not which command-line flag to pass.

An engine error that ends in advice carries it as data (engine/errors.py: a `Remedy` and its
facts); its `str()` is the CLI's wording (`python -m engine download …`, `--token`,
`--max-context`). The window words the same remedy here, from the table below, and starts each
sentence with a capital. Nothing here reads the engine's sentences, so rewording the CLI cannot
change the window's text.
"""

from __future__ import annotations

import re

from engine.front_door import EngineError, Remedy

CHOOSER = "Models → Choose or download a model…"
NO_MODEL_YET = f"No model is loaded yet: open a model with {CHOOSER} (Ctrl+M)"
"""The one wording for "there is no model": the status bar, the chat and step mode all point at
the same menu (an earlier "File → Open model folder…" contradicted the status bar)."""
TOKEN_FIELD = "paste an access token in the model chooser's Token field"

WINDOW_ADVICE: dict[Remedy, str] = {
    Remedy.DOWNLOAD: f"{{problem}}; download it with {CHOOSER} or pick a folder",
    Remedy.FINISH_DOWNLOAD: (
        f"{{problem}}; finish it with {CHOOSER} (files already fetched are kept)"
    ),
    Remedy.LOG_IN: "{problem}: accept its licence at {page} while logged in, then " + TOKEN_FIELD,
    Remedy.TOKEN_IF_PRIVATE: "{problem}; if it is private, " + TOKEN_FIELD,
    Remedy.NEW_TOKEN: (
        "{problem}: create a read token at {tokens_page} and paste it in the model chooser's "
        "Token field"
    ),
    Remedy.RETYPE_TOKEN: "{problem}; copy it again from {tokens_page}",
    Remedy.CHECK_REVISION: "{problem}; check the revision (a branch, tag or commit of the repo)",
    Remedy.FIX_REVISION_NAME: "{problem}; check the revision",
    Remedy.GIVE_REVISION: "{problem}; give a branch, tag or commit of the repo",
    Remedy.SMALLER_CONTEXT: "{problem}; close other programs or choose a smaller model",
    Remedy.LESS_MEMORY: "{problem}; choose a smaller model",
    Remedy.MORE_CONTEXT: "{problem}",
}
"""The window's words for each remedy: `{problem}` and the hint's facts are filled in."""

_SENTENCE_START = re.compile(r"(^|(?<!\be\.g)(?<!\bi\.e)[.!?]\s+)([a-z])")


def worded(error: EngineError) -> str:
    """The error's problem with the window's advice for its remedy (uncapitalised)."""
    if error.hint is None:
        return str(error)
    return WINDOW_ADVICE[error.hint.remedy].format(problem=error.problem, **error.hint.facts)


def for_the_app(message: str | BaseException) -> str:
    """An engine error worded for the window, or a message as it is, each sentence capitalised.

    The worker threads send `worded(error)` (plain text crosses the thread boundary); the
    window applies this to every message it shows, which only capitalises such text.
    """
    text = worded(message) if isinstance(message, EngineError) else str(message)
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


_END = (".", "!", "?", "…")


def sentence(text: str) -> str:
    """`text` stripped and ending with a full stop unless it already ends a sentence, so that a
    message joined after it starts a new one ("…not available. Built-in: …", not "…not
    available Built-in: …")."""
    text = text.strip()
    if not text or text.endswith(_END):
        return text
    return text + "."


def sentences(*parts: str) -> str:
    """Parts of a message joined as sentences: each punctuated, empty ones left out."""
    return " ".join(s for s in (sentence(p) for p in parts) if s)
