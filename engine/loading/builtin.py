"""The model Loopchat ships: where it is, and how well it predicts text it never saw.

`builtin` names it wherever a model path is accepted (CLI, self-test, the app's chooser), so a fresh
install chats offline at once. The weights live in resources/builtin, found both installed and
frozen by PyInstaller (sys._MEIPASS), like every other shipped resource.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.errors import EngineError

BUILTIN_NAME = "builtin"
DISPLAY_NAME = "Built-in: Loopchat dictionary"
DRAFT_NAME = "builtin-draft"
"""The built-in model's small sibling (same corpus and tokenizer), shipped as its speculative
draft so the offline app can show speculative decoding with two models."""


def builtin_dir(folder: str = "builtin") -> Path:
    """The shipped model's folder (HF layout); `builtin_draft` for its draft."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources" / folder
    import resources

    return Path(resources.__file__).resolve().parent / folder


def is_builtin_draft(name: str | Path) -> bool:
    return str(name).strip().lower() == DRAFT_NAME


def resolve_builtin_draft() -> Path:
    folder = builtin_dir("builtin_draft")
    if not (folder / "model.safetensors").is_file():
        raise EngineError(
            f"the built-in draft model is missing from this installation ({folder}); "
            "reinstall Loopchat, or use --draft lookup"
        )
    return folder


def is_builtin(name: str | Path) -> bool:
    return str(name).strip().lower() == BUILTIN_NAME


def resolve_builtin() -> Path:
    folder = builtin_dir()
    if not (folder / "model.safetensors").is_file():
        raise EngineError(
            f"the built-in model is missing from this installation ({folder}); "
            "reinstall Loopchat or choose another model"
        )
    return folder


def held_out_dialogues(folder: Path) -> list[tuple[str, str]]:
    """The (question, answer) pairs kept out of training and shipped with the model."""
    lines = (folder / "held_out.jsonl").read_text(encoding="utf-8").splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()]
    return [(p["user"], p["assistant"]) for p in pairs]
