"""Chat prompts: Meta's Llama 2 format token for token, chat templates exactly as transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.text.chat import (
    B_INST,
    B_SYS,
    E_INST,
    E_SYS,
    Message,
    chat_prompt_ids,
    llama2_prompt_ids,
    load_chat_template,
)
from engine.text.tokenizer import Tokenizer
from tests.fixtures.models import LLAMA2_CHAT_TEMPLATE

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# TinyLlama-1.1B-Chat-v1.0's own template (Zephyr style, with eos_token after each turn).
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + "
    "eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

CONVERSATIONS = [
    [Message("user", "Hello there")],
    [Message("system", "Be brief."), Message("user", "Hello there")],
    [
        Message("system", "You are a llama."),
        Message("user", "What is 2 + 2?"),
        Message("assistant", " It is 4. "),
        Message("user", "And café, 日本 😀?"),
    ],
    [
        Message("user", "one"),
        Message("assistant", "two"),
        Message("user", "three\nfour"),
        Message("assistant", "five"),
        Message("user", "six"),
    ],
]


@pytest.fixture(scope="module")
def tok(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


def test_meta_format_golden_ids(tok: Tokenizer) -> None:
    messages = [
        Message("system", "Sys"),
        Message("user", "Hi"),
        Message("assistant", "Hello!"),
        Message("user", "Bye"),
    ]
    ids = llama2_prompt_ids(tok, messages)
    first = tok.encode(f"{B_INST} {B_SYS}Sys{E_SYS}Hi {E_INST} Hello! ", bos=True, eos=True)
    last = tok.encode(f"{B_INST} Bye {E_INST}", bos=True, eos=False)
    assert ids == first + last
    assert ids[0] == 1 and ids[len(first) - 1] == 2 and ids[len(first)] == 1
    assert ids[-1] != 2
    assert chat_prompt_ids(tok, messages, None) == ids
    assert tok.decode(ids).startswith("[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST] Hello!")


def test_meta_format_strips_content(tok: Tokenizer) -> None:
    spaced = llama2_prompt_ids(tok, [Message("user", "  Hi  ")])
    assert spaced == tok.encode("[INST] Hi [/INST]", bos=True)


@pytest.mark.parametrize(
    "messages",
    [
        [Message("assistant", "hi")],
        [Message("user", "a"), Message("user", "b")],
        [Message("user", "a"), Message("assistant", "b")],
        [Message("system", "s")],
    ],
)
def test_bad_role_order_is_refused(tok: Tokenizer, messages) -> None:
    with pytest.raises(EngineError):
        chat_prompt_ids(tok, messages, None)


def make_tokenizer_folder(base: Path, tokenizer_path: Path, template: str, tokens: dict) -> Path:
    base.mkdir()
    shutil.copy(tokenizer_path, base / "tokenizer.model")
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": template,
        **tokens,
    }
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    return base


@pytest.mark.parametrize(
    ("name", "template"), [("llama2", LLAMA2_CHAT_TEMPLATE), ("chatml", CHATML), ("zephyr", ZEPHYR)]
)
def test_template_equals_transformers(
    name: str, template: str, tok: Tokenizer, tokenizer_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    folder = make_tokenizer_folder(tmp_path / name, tokenizer_path, template, {})
    reference = AutoTokenizer.from_pretrained(folder)
    assert load_chat_template(folder) == template
    for messages in CONVERSATIONS:
        expected = reference.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=True,
            add_generation_prompt=True,
        )
        if not isinstance(expected, list):
            expected = expected["input_ids"]
        assert chat_prompt_ids(tok, messages, template) == expected, messages


def test_llama2_template_matches_meta_reference_shape(tok: Tokenizer) -> None:
    """The HF template and Meta's format place BOS/EOS identically (the text spacing differs)."""
    messages = CONVERSATIONS[2]
    templated = chat_prompt_ids(tok, messages, LLAMA2_CHAT_TEMPLATE)
    meta = llama2_prompt_ids(tok, messages)
    assert [i for i, t in enumerate(templated) if t in (1, 2)] != []
    assert templated.count(1) == meta.count(1) == 2
    assert templated.count(2) == meta.count(2) == 1


def test_template_errors_are_engine_errors(tok: Tokenizer) -> None:
    with pytest.raises(EngineError, match="alternate"):
        chat_prompt_ids(tok, [Message("user", "a"), Message("user", "b")], LLAMA2_CHAT_TEMPLATE)


def test_load_chat_template_variants(tmp_path: Path) -> None:
    assert load_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": [
                    {"name": "default", "template": "X"},
                    {"name": "tool_use", "template": "Y"},
                ]
            }
        )
    )
    assert load_chat_template(tmp_path) == "X"
    (tmp_path / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(EngineError, match="tokenizer_config.json"):
        load_chat_template(tmp_path)
