"""Chat prompt ids follow the model folder's own '▁'-prefix rule, equal to transformers and Meta.

Variants are built from the session's SentencePiece model: tokenizer.json files converted by
transformers/tokenizers (then given Llama 2's Hub normalizer, or a Metaspace prepend_scheme), and
folders with only tokenizer_config.json's `legacy` flag. References: transformers'
`PreTrainedTokenizerFast` on the very tokenizer.json (it honours the file as written),
`AutoTokenizer` for tokenizer_config-only folders, and Meta's `chat_completion` rule
([1] + sp.encode("[INST] ... [/INST]") per turn) for the prefixed ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.loading.loader import load_model
from engine.text.chat import B_INST, B_SYS, E_INST, E_SYS, Message, chat_prompt_ids
from engine.text.prefix_rule import prefix_rule, rule_from_tokenizer_json
from tests.fixtures.models import LLAMA2_CHAT_TEMPLATE

CONVERSATIONS = [
    [Message("user", "hello world")],
    [Message("system", "Be brief."), Message("user", "What is attention?")],
    [
        Message("system", "You answer in one word."),
        Message("user", "Name a colour"),
        Message("assistant", "Blue"),
        Message("user", "café → 日本語, and 42?"),
    ],
    [Message("user", "  leading spaces\nand a newline ")],
]

PREPEND_NORMALIZER = {  # what meta-llama/Llama-2-*-hf repos ship in tokenizer.json
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    ],
}


def metaspace(scheme: str) -> dict:
    return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": False}


@pytest.fixture(scope="module")
def converted(tiny_hf_dir: Path) -> dict:
    """The session tokenizer converted to a tokenizers-library tokenizer.json by transformers."""
    from transformers import AutoTokenizer

    return json.loads(AutoTokenizer.from_pretrained(tiny_hf_dir).backend_tokenizer.to_str())


def make_folder(
    src: Path,
    dst: Path,
    legacy: bool | None,
    tokenizer_json: dict | None = None,
) -> Path:
    shutil.copytree(src, dst)
    config_path = dst / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("legacy", None)
    if legacy is not None:
        config["legacy"] = legacy
    config_path.write_text(json.dumps(config))
    if tokenizer_json is not None:
        (dst / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    return dst


def with_rule(converted: dict, normalizer: dict | None, pre_tokenizer: dict | None) -> dict:
    data = dict(converted)
    data["normalizer"] = normalizer
    data["pre_tokenizer"] = pre_tokenizer
    return data


def meta_ids(sp, messages: list[Message]) -> list[int]:
    """Meta's llama/generation.py chat_completion, written out independently of the engine."""
    dialog = [{"role": m.role, "content": m.content} for m in messages]
    if dialog[0]["role"] == "system":
        dialog = [
            {
                "role": dialog[1]["role"],
                "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"],
            }
        ] + dialog[2:]
    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += [sp.bos_id(), *sp.encode(text), sp.eos_id()]
    ids += [sp.bos_id(), *sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")]
    return ids


def hf_file_ids(folder: Path, messages: list[Message]) -> list[int]:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    return _ids(tok, messages)


def hf_auto_ids(folder: Path, messages: list[Message]) -> list[int]:
    from transformers import AutoTokenizer

    return _ids(AutoTokenizer.from_pretrained(folder), messages)


def _ids(tok, messages: list[Message]) -> list[int]:
    out = tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        chat_template=LLAMA2_CHAT_TEMPLATE,
        add_generation_prompt=True,
        tokenize=True,
    )
    return list(out if isinstance(out, list) else out["input_ids"])


@pytest.mark.parametrize(
    "name, normalizer, pre, legacy, rule",
    [
        ("prepend-normalizer", PREPEND_NORMALIZER, None, False, "always"),
        ("metaspace-always", None, metaspace("always"), False, "always"),
        ("metaspace-first", None, metaspace("first"), True, "first"),
    ],
)
def test_tokenizer_json_decides(
    tiny_hf_dir: Path,
    tmp_path: Path,
    converted: dict,
    name: str,
    normalizer: dict | None,
    pre: dict | None,
    legacy: bool,
    rule: str,
) -> None:
    folder = make_folder(
        tiny_hf_dir, tmp_path / name, legacy, with_rule(converted, normalizer, pre)
    )
    assert prefix_rule(folder) == rule
    loaded = load_model(folder, dtype="float32", device="cpu")
    assert loaded.tokenizer.prefix_rule == rule
    for messages in CONVERSATIONS:
        ours = chat_prompt_ids(loaded.tokenizer, messages, loaded.chat_template)
        assert ours == hf_file_ids(folder, messages)
        meta = meta_ids(loaded.tokenizer.sp, messages)
        assert (ours == meta) == (rule == "always")


@pytest.mark.parametrize("legacy, rule", [(True, "always"), (False, "first"), (None, "first")])
def test_legacy_flag_decides_without_tokenizer_json(
    tiny_hf_dir: Path, tmp_path: Path, legacy: bool | None, rule: str
) -> None:
    folder = make_folder(tiny_hf_dir, tmp_path / f"legacy-{legacy}", legacy)
    assert prefix_rule(folder) == rule
    loaded = load_model(folder, dtype="float32", device="cpu")
    for messages in CONVERSATIONS:
        ours = chat_prompt_ids(loaded.tokenizer, messages, loaded.chat_template)
        assert ours == hf_auto_ids(folder, messages)
        meta = meta_ids(loaded.tokenizer.sp, messages)
        assert (ours == meta) == (rule == "always")


def test_meta_layout_uses_meta_rule(tiny_meta_dir: Path) -> None:
    loaded = load_model(tiny_meta_dir, dtype="float32", device="cpu")
    assert loaded.chat_template is None
    for messages in CONVERSATIONS:
        ours = chat_prompt_ids(loaded.tokenizer, messages, None)
        assert ours == meta_ids(loaded.tokenizer.sp, messages)


@pytest.mark.parametrize(
    "data, rule",
    [
        ({"normalizer": PREPEND_NORMALIZER, "pre_tokenizer": None}, "always"),
        ({"normalizer": None, "pre_tokenizer": metaspace("never")}, "never"),
        (
            {
                "normalizer": None,
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [metaspace("first")]},
            },
            "first",
        ),
        ({"pre_tokenizer": {"type": "Metaspace", "add_prefix_space": True}}, "always"),
        ({"normalizer": None, "pre_tokenizer": None}, "never"),
    ],
)
def test_rule_from_tokenizer_json(data: dict, rule: str) -> None:
    assert rule_from_tokenizer_json(data) == rule
