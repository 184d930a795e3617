"""Whether text after a special token gets SentencePiece's dummy-prefix '▁': the folder decides.

A chat prompt is text cut by special tokens ("<s>[INST] hi [/INST]"). SentencePiece prefixes the
start of every text it encodes with '▁'; Meta encodes each chat segment that way ([1] +
sp.encode("[INST] ...")), while transformers' `legacy=False` tokenizers prefix only the start of
the whole input. Both exist on the Hub, and the ids differ, so the model folder's own files say
which one its model was trained with:

* tokenizer.json, when present: a normalizer that prepends '▁' (Llama 2's Hub repos) or a
  Metaspace pre-tokenizer with prepend_scheme "always" -> every segment; "first" -> only the
  input's start; neither -> no prefix.
* otherwise tokenizer_config.json's `legacy`: true -> every segment (Meta's ids); false or absent
  -> only the input's start (what transformers 5 does).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from engine.errors import EngineError
from engine.files import read_json

log = logging.getLogger(__name__)

PrefixRule = Literal["always", "first", "never"]
SPACE = "\u2581"


def _flatten(node: Any, key: str) -> list[dict]:
    """A normalizer/pre-tokenizer and, for a Sequence, its members (one level deep or more)."""
    if not isinstance(node, dict):
        return []
    members = node.get(key)
    if node.get("type") == "Sequence" and isinstance(members, list):
        return [leaf for member in members for leaf in _flatten(member, key)]
    return [node]


def rule_from_tokenizer_json(data: Any) -> PrefixRule:
    """The prefix rule a tokenizers-library tokenizer.json describes."""
    if not isinstance(data, dict):
        raise EngineError("tokenizer.json does not hold a JSON object")
    for normalizer in _flatten(data.get("normalizer"), "normalizers"):
        if normalizer.get("type") == "Prepend" and normalizer.get("prepend") == SPACE:
            return "always"
    for pre in _flatten(data.get("pre_tokenizer"), "pretokenizers"):
        if pre.get("type") != "Metaspace":
            continue
        scheme = pre.get("prepend_scheme")
        if scheme is None:  # tokenizers < 0.14 wrote add_prefix_space instead
            scheme = "always" if pre.get("add_prefix_space", True) else "never"
        if scheme in ("always", "first", "never"):
            return scheme
        raise EngineError(f"tokenizer.json has an unknown Metaspace prepend_scheme {scheme!r}")
    return "never"


def prefix_rule(folder: Path) -> PrefixRule:
    """The rule for the model in `folder` (see the module docstring)."""
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.exists() or tokenizer_json.is_symlink():
        data = read_json(tokenizer_json)
        try:
            return rule_from_tokenizer_json(data)
        except EngineError as exc:
            raise EngineError(f"{tokenizer_json.parent}/{exc}") from None
    config_path = folder / "tokenizer_config.json"
    if config_path.exists() or config_path.is_symlink():
        config = read_json(config_path)
        if isinstance(config, dict) and config.get("legacy") is True:
            return "always"
    return "first"
