"""SentencePiece tokenizer and a streaming decoder that never garbles text mid-stream.

Streaming needs care with Llama's vocabulary: a word's leading space lives in its piece ('▁the'),
SentencePiece drops the space of the very first piece, and characters outside the vocabulary arrive
as several byte pieces ('<0xF0>' '<0x9F>' '<0x98>' '<0x80>') that only form a character together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from engine.errors import EngineError

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"


class Tokenizer:
    """The model's SentencePiece processor with the ids the engine needs."""

    def __init__(self, model_path: Path) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise EngineError(
                f"{model_path} is missing: a Llama model folder needs tokenizer.model"
            )
        self._setup(_processor(lambda sp: sp.Load(str(model_path)), model_path), model_path)

    @classmethod
    def from_proto(cls, proto: bytes, origin: Path) -> Tokenizer:
        """A tokenizer from a serialized SentencePiece ModelProto (e.g. one rebuilt from a GGUF
        file's vocabulary by engine.gguf.vocab); `origin` is the file it came from, for messages
        and `path`."""
        origin = Path(origin)
        tokenizer = cls.__new__(cls)
        load = _processor(lambda sp: sp.LoadFromSerializedProto(proto), origin, "its vocabulary")
        tokenizer._setup(load, origin)
        return tokenizer

    def _setup(self, processor, origin: Path) -> None:
        self.path = origin
        """The file the vocabulary came from: tokenizer.model, or a GGUF model file."""
        self.sp = processor
        self.prefix_rule = "first"
        """Whether chat text after a special token gets the dummy-prefix '▁': "always" (Meta's
        ids), "first" (transformers' legacy=False) or "never"; the loader reads it from the model
        folder (engine.text.prefix_rule)."""
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise EngineError(f"{origin} defines no BOS/EOS tokens; it is not a Llama tokenizer")

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text` (SentencePiece adds the leading-space marker, as Llama expects)."""
        ids = list(self.sp.encode(text))
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        """The raw vocabulary entry ('▁the', '<0x0A>', '<s>')."""
        return self.sp.id_to_piece(int(token_id))

    def is_control(self, token_id: int) -> bool:
        """BOS, EOS and other tokens that decode to nothing."""
        return bool(self.sp.is_control(int(token_id)))

    def display_text(self, token_id: int) -> str:
        """What this one token adds on its own, readable in a top-k list.

        Byte pieces that are complete ASCII characters (like '<0x0A>', a newline) become that
        character; bytes of longer UTF-8 characters keep their '<0xE2>' form, which is honest:
        alone they are not text.
        """
        token_id = int(token_id)
        piece = self.sp.id_to_piece(token_id)
        if self.sp.is_control(token_id) or self.sp.is_unknown(token_id):
            return piece
        if self.sp.is_byte(token_id):
            value = int(piece[3:-1], 16)
            return chr(value) if value < 0x80 else piece
        return piece.replace("\u2581", " ")


def _processor(load, origin: Path, what: str = ""):
    """A SentencePieceProcessor after `load(processor)`; EngineError (one line) if it fails.

    `what` names the part of `origin` that holds the model, if not the whole file."""
    import sentencepiece as spm

    subject = f"{origin}: {what}" if what else str(origin)
    processor = spm.SentencePieceProcessor()
    try:
        ok = load(processor)
    except (OSError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())
        raise EngineError(f"{subject} is not a SentencePiece model ({detail})") from None
    if not ok:
        raise EngineError(f"{subject} is not a SentencePiece model")
    return processor


class StreamDecoder:
    """Turns ids arriving one by one into text pieces whose concatenation equals decode(all ids).

    It decodes a short window of recent ids rather than the whole history: `prefix` ids whose text
    was already emitted, plus the new ids. The new text is the window's text minus the prefix's.
    Decoding the prefix together with the new ids keeps SentencePiece's rule for the first piece's
    space from eating a real space mid-stream. While the window's text ends in U+FFFD, a multi-byte
    character may still be incomplete, so nothing is emitted until it completes (or `flush`).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_start = 0  # window = ids[prefix_start:]; ids[prefix_start:read_start] emitted
        self._read_start = 0

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (often one word piece, sometimes "")."""
        self._ids.append(int(token_id))
        window = self._ids[self._prefix_start :]
        text = self._tokenizer.decode(window)
        if text.endswith(REPLACEMENT):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """Text still held back (e.g. bytes that never formed a character) at the end."""
        if self._read_start == len(self._ids):
            return ""
        return self._advance(self._tokenizer.decode(self._ids[self._prefix_start :]))

    def _advance(self, window_text: str) -> str:
        prefix = self._tokenizer.decode(self._ids[self._prefix_start : self._read_start])
        if not window_text.startswith(prefix):
            # Not expected from SentencePiece, but never emit wrong text: fall back to the full
            # history for this one step and restart the window from here.
            log.debug("stream decoder window mismatch; resynchronising")
            emitted = self._tokenizer.decode(self._ids[: self._read_start])
            full = self._tokenizer.decode(self._ids)
            new = full[len(emitted) :]
        else:
            new = window_text[len(prefix) :]
        # The next window starts at the ids just emitted, unless they were all control tokens
        # (BOS/EOS decode to nothing): a window starting there would lose the space of the piece
        # after them, which SentencePiece drops only at the very start of the text.
        if not all(self._tokenizer.is_control(i) for i in self._ids[self._read_start :]):
            self._prefix_start = self._read_start
        self._read_start = len(self._ids)
        return new
