"""A conversation as prompt TEXT, for servers that take a raw completion prompt.

llama-cpp-python's server takes a prompt only as text (a list of ids is refused) and reads the
special-token strings "<s>"/"</s>" inside it as BOS/EOS, adding one BOS at the start itself. So
the client writes Llama 2's chat format (Meta's `chat_completion`, as engine/text/chat.py builds it
from ids) as text with those markers; the server's tokenizer then gives the same ids Meta's
reference gives: its SentencePiece-style tokenizer adds the leading '▁' after every special
token, as encoding each segment separately does.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.text.chat import B_INST, B_SYS, E_INST, E_SYS, Message, _check_roles

BOS_TEXT, EOS_TEXT = "<s>", "</s>"


def llama2_prompt_text(messages: Sequence[Message]) -> str:
    """The Llama 2 chat prompt for `messages` (ending with a user turn), starting with "<s>"."""
    turns = _check_roles(messages)
    if messages[0].role == "system":
        first = turns[0]
        turns[0] = Message("user", B_SYS + messages[0].content + E_SYS + first.content)
    text = ""
    for prompt, answer in zip(turns[0::2], turns[1::2], strict=False):
        text += (
            f"{BOS_TEXT}{B_INST} {prompt.content.strip()} {E_INST} {answer.content.strip()} "
            f"{EOS_TEXT}"
        )
    return text + f"{BOS_TEXT}{B_INST} {turns[-1].content.strip()} {E_INST}"


def conversation_text(messages: Sequence[Message]) -> str:
    """A conversation as text: the prompt, and after it the reply when it ends with one (as
    engine.text.prompt.conversation_ids: the reply's text after one space, stripped)."""
    messages = list(messages)
    if messages and messages[-1].role == "assistant":
        return llama2_prompt_text(messages[:-1]) + " " + messages[-1].content.strip()
    return llama2_prompt_text(messages)


def without_bos(text: str) -> str:
    """The text to send: the server adds the one leading BOS itself (two would be read as two)."""
    return text.removeprefix(BOS_TEXT)
