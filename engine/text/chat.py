"""A conversation becomes prompt token ids, in the model's own chat format.

Two formats exist, and both are pure functions of (tokenizer, messages, template):

* The model's `chat_template` from tokenizer_config.json, a jinja2 template, rendered the way the
  Hugging Face ecosystem renders it (`apply_chat_template`), then tokenised with special-token
  strings ("<s>", "</s>") turned into their ids.
* Without a template (Meta's original layout), Llama 2's own format exactly as Meta's reference
  `chat_completion` builds it: the system prompt merged into the first user turn, each finished
  (user, assistant) pair wrapped in BOS … EOS, the last user turn in BOS … [/INST].
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from engine.errors import EngineError
from engine.files import read_json, read_text
from engine.text.tokenizer import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


def _check_roles(messages: Sequence[Message]) -> list[Message]:
    """System (optional) first, then user/assistant alternating, ending with the user."""
    turns = list(messages[1:] if messages and messages[0].role == "system" else messages)
    if not turns:
        raise EngineError("the conversation has no user message")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            raise EngineError(
                f"message {i + 1} is from '{message.role}' but '{expected}' was expected: "
                "turns must alternate user/assistant after an optional system prompt"
            )
    if turns[-1].role != "user":
        raise EngineError("the conversation must end with a user message to get a reply")
    return turns


def llama2_prompt_ids(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """Meta's Llama 2 chat format, token for token as llama/generation.py builds it."""
    turns = _check_roles(messages)
    if messages[0].role == "system":
        first = turns[0]
        turns[0] = Message("user", B_SYS + messages[0].content + E_SYS + first.content)
    ids: list[int] = []
    for prompt, answer in zip(turns[0::2], turns[1::2], strict=False):
        ids += tokenizer.encode(
            f"{B_INST} {prompt.content.strip()} {E_INST} {answer.content.strip()} ",
            bos=True,
            eos=True,
        )
    ids += tokenizer.encode(f"{B_INST} {turns[-1].content.strip()} {E_INST}", bos=True)
    return ids


MIN_RENDER_LIMIT = 256 * 1024
"""Rendered prompts may be this long plus a few times the conversation's own text."""


def render_limit(messages: Sequence[Message]) -> int:
    """The most characters a template may render for these messages (it only adds markup)."""
    return MIN_RENDER_LIMIT + 4 * sum(len(m.content) for m in messages)


def render_template(
    template: str,
    messages: Sequence[Message],
    special: dict[str, str],
    add_generation_prompt: bool = True,
) -> str:
    """Render a chat template the way transformers does (sandboxed jinja2, same globals).

    The template is the model folder's code: whatever it raises or however much it tries to
    compute, the result is one EngineError (see engine.text.template_sandbox for the bounds).
    """
    from engine.text.template_sandbox import BoundedSandbox

    def raise_exception(message: str) -> None:
        raise EngineError(f"the model's chat template refused the conversation: {message}")

    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda value, indent=None, **kw: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    limit = render_limit(messages)
    try:
        compiled = env.from_string(template)
        env.reset_budget()
        parts: list[str] = []
        size = 0
        for part in compiled.generate(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            **special,
        ):
            size += len(part)
            if size > limit:
                raise EngineError(
                    f"the model's chat template renders more than {limit} characters for this "
                    "conversation; the template is broken"
                )
            parts.append(part)
        return "".join(parts)
    except EngineError:
        raise
    except (Exception, RecursionError) as exc:  # the template is foreign code: anything goes
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise EngineError(
            f"the model's chat template failed ({type(exc).__name__}: {detail})"
        ) from None


def _no_prefix_processor(tokenizer: Tokenizer):
    """The same SentencePiece model without the dummy-prefix space (made once per tokenizer).

    Where the folder's rule says text after a special token (e.g. "[INST]" after "<s>") gets no
    leading '▁' (transformers' legacy=False; see engine.text.prefix_rule), SentencePiece itself
    would still add one. A copy of the model with that one normaliser option turned off does not.
    The copy comes from the loaded model's own proto, never from a file again (a tokenizer built
    from a GGUF file's vocabulary has no tokenizer.model).
    """
    cached = getattr(tokenizer, "_no_prefix_sp", None)
    if cached is not None:
        return cached
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    processor = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    tokenizer._no_prefix_sp = processor  # type: ignore[attr-defined]
    return processor


def encode_rendered(tokenizer: Tokenizer, text: str, special: dict[str, str]) -> list[int]:
    """Tokenise rendered template text: special-token strings become ids, the rest is text.

    Each text segment gets SentencePiece's '▁' prefix or not by the tokenizer's prefix rule:
    "always" (Meta's ids), "first" (only at the very start) or "never".
    """
    rule = getattr(tokenizer, "prefix_rule", "first")
    by_text = {}
    for value in special.values():
        token_id = tokenizer.sp.piece_to_id(value)
        if value and token_id != tokenizer.sp.unk_id() or value == tokenizer.piece(0):
            by_text[value] = token_id
    if not by_text:
        return _encode_segment(tokenizer, text, rule in ("always", "first"))
    pattern = "(" + "|".join(re.escape(s) for s in sorted(by_text, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for i, part in enumerate(re.split(pattern, text)):
        if not part:
            continue
        if part in by_text:
            ids.append(by_text[part])
        else:
            prefixed = rule == "always" or (rule == "first" and i == 0)
            ids += _encode_segment(tokenizer, part, prefixed)
    return ids


def _encode_segment(tokenizer: Tokenizer, text: str, prefixed: bool) -> list[int]:
    if prefixed:
        return tokenizer.encode(text, bos=False)
    return list(_no_prefix_processor(tokenizer).encode(text))


def chat_prompt_ids(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    chat_template: str | None,
    special_tokens: dict[str, str] | None = None,
) -> list[int]:
    """Prompt ids for a conversation that ends with a user turn (the reply comes next)."""
    if chat_template is None:
        return llama2_prompt_ids(tokenizer, messages)
    _check_roles(messages)
    special = special_tokens or {
        "bos_token": tokenizer.piece(tokenizer.bos_id),
        "eos_token": tokenizer.piece(tokenizer.eos_id),
        "unk_token": tokenizer.piece(0),
    }
    text = render_template(chat_template, messages, special)
    return encode_rendered(tokenizer, text, special)


def load_chat_template(folder: Path) -> str | None:
    """The chat template from tokenizer_config.json, if the model has one."""
    path = folder / "tokenizer_config.json"
    config: Any = read_json(path) if path.exists() or path.is_symlink() else None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        chat_file = folder / "chat_template.jinja"
        if chat_file.exists() or chat_file.is_symlink():
            template = read_text(chat_file)
    return template if isinstance(template, str) and template.strip() else None
