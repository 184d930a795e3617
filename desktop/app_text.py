"""Engine messages reworded for the window: what to click, not which command-line flag to pass.

The engine's errors are written for its CLI (`python -m engine download …`, `--token`,
`--max-context`); the same exceptions reach the window. Rather than fork the engine's wording,
the window maps those phrases here, in one place, and starts each sentence with a capital.
"""

from __future__ import annotations

import re

CHOOSER = "Models → Choose or download a model…"
TOKEN_FIELD = "paste an access token in the model chooser's Token field"

_REWORD: tuple[tuple[str, str], ...] = (
    (r"download it with `python -m engine download [^`]+`", f"download it with {CHOOSER}"),
    (
        r"finish it with `python -m engine download [^`]+`",
        f"finish it with {CHOOSER} (files already fetched are kept)",
    ),
    (r"`python -m engine download ([^`]+)`", rf"{CHOOSER} (\1)"),
    (r"give an access token with --token or log in with `hf auth login` \([^)]*\)", TOKEN_FIELD),
    (r"give an access token with --token", TOKEN_FIELD),
    (r"give it with --token or `hf auth login`", "paste it in the model chooser's Token field"),
    (r"the token given with --token", "the access token"),
    (r";? ?use --max-context for more", ""),
    (
        r"use a smaller --max-context \(about \d+ fits\) or close other programs",
        "close other programs or choose a smaller model",
    ),
    (r"use a smaller --max-context or dtype", "choose a smaller model"),
    (r"check --revision", "check the revision"),
    (r"--revision is empty", "The revision is empty"),
)
_SENTENCE_START = re.compile(r"(^|(?<!\be\.g)(?<!\bi\.e)[.!?]\s+)([a-z])")


def for_the_app(message: str) -> str:
    """`message` with CLI advice replaced by the window's own, each sentence capitalised."""
    for pattern, replacement in _REWORD:
        message = re.sub(pattern, replacement, message)
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), message)
