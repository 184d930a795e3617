"""A GGUF file's SentencePiece vocabulary, rebuilt as the `tokenizer.model` it was converted from.

llama.cpp's converter stores a Llama tokenizer as plain lists (pieces, scores, token types) plus a
few ids and flags. SentencePiece encodes with nothing more than those: the BPE merges follow the
scores, byte fallback covers characters outside the vocabulary, and Llama's normaliser is the
identity with a dummy-prefix space. Rebuilding a real ModelProto from them and handing it to
SentencePiece itself gives exactly the original ids, byte fallback and all, with no tokenizer code
of our own to get wrong. Everything here is data: nothing from the file is ever executed.

Trainer-only fields (split_digits, character coverage, ...) do not change encoding; they are set as
Meta's Llama 2 model sets them only so the proto reads like the original.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from engine.errors import EngineError

MAX_PIECES = 1_000_000
"""More pieces than any real vocabulary (Llama 2 has 32,000): a damaged or hostile file."""

# GGUF token types (llama.cpp) and SentencePiece piece types share the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's defaults for a SentencePiece ("llama") vocabulary when an id key is absent.
DEFAULT_BOS, DEFAULT_EOS = 1, 2

_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
_REDOWNLOAD = "the file is damaged or was not made by llama.cpp's converter"


def sentencepiece_proto(metadata: Mapping[str, object], origin: str) -> bytes:
    """A serialized SentencePiece ModelProto equal in encoding to the file's original tokenizer.

    `metadata` is the GGUF key/value table (lists as Python lists); `origin` names the file in
    error messages. Raises EngineError (one line) for anything that is not a Llama 2-style
    SentencePiece vocabulary.
    """
    from sentencepiece import sentencepiece_model_pb2

    _check_model(metadata, origin)
    tokens = _tokens(metadata, origin)
    count = len(tokens)
    scores = _scores(metadata, origin, count)
    types = _types(metadata, origin, count)
    byte_count = _check_bytes(tokens, types, origin)
    unk_id = _unknown_id(types, origin)
    bos_id = _special_id(metadata, "bos_token_id", DEFAULT_BOS, count, origin)
    eos_id = _special_id(metadata, "eos_token_id", DEFAULT_EOS, count, origin)
    pad_id = _pad_id(metadata, count, {unk_id, bos_id, eos_id})
    add_space_prefix = _flag(metadata, "tokenizer.ggml.add_space_prefix", True, origin)

    proto = sentencepiece_model_pb2.ModelProto()
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        entry = proto.pieces.add()
        entry.piece = piece
        entry.score = score
        entry.type = kind

    trainer = proto.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = count
    trainer.byte_fallback = byte_count > 0
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.treat_whitespace_as_suffix = False  # read by the normaliser: must stay false
    # SentencePiece finds its BOS/EOS/UNK/PAD ids by these piece names, not by the id fields.
    trainer.unk_id, trainer.unk_piece = unk_id, tokens[unk_id]
    trainer.bos_id, trainer.bos_piece = bos_id, tokens[bos_id]
    trainer.eos_id, trainer.eos_piece = eos_id, tokens[eos_id]
    trainer.pad_id = pad_id
    if pad_id >= 0:
        trainer.pad_piece = tokens[pad_id]

    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = add_space_prefix
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def add_bos_token(metadata: Mapping[str, object]) -> bool:
    """Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`; Llama's default: yes)."""
    value = metadata.get("tokenizer.ggml.add_bos_token", True)
    return value if isinstance(value, bool) else True


def _check_model(metadata: Mapping[str, object], origin: str) -> None:
    model = metadata.get("tokenizer.ggml.model")
    if model == "llama":
        return
    if model is None:
        raise EngineError(
            f"{origin} has no tokenizer (no tokenizer.ggml.model); Loopchat needs a Llama 2-family "
            "GGUF file with its SentencePiece vocabulary"
        )
    if model == "gpt2":
        raise EngineError(
            f"{origin}: Llama 3 files use a different tokenizer (GPT-2 style BPE); Loopchat runs "
            "Llama 2-family models"
        )
    raise EngineError(
        f"{origin} uses the {_short(model)} tokenizer; Loopchat runs Llama 2-family models, "
        "whose GGUF tokenizer is 'llama' (SentencePiece)"
    )


def _tokens(metadata: Mapping[str, object], origin: str) -> list[str]:
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise EngineError(f"{origin} has no vocabulary (tokenizer.ggml.tokens); {_REDOWNLOAD}")
    if not isinstance(tokens, list) or not tokens:
        raise EngineError(f"{origin}: tokenizer.ggml.tokens is not a list of pieces; {_REDOWNLOAD}")
    if len(tokens) > MAX_PIECES:
        raise EngineError(
            f"{origin} claims {len(tokens):,} vocabulary pieces (at most {MAX_PIECES:,} are "
            f"accepted); {_REDOWNLOAD}"
        )
    seen: set[str] = set()
    for index, piece in enumerate(tokens):
        if not isinstance(piece, str):
            raise EngineError(
                f"{origin}: vocabulary piece {index} is a {type(piece).__name__}, not text; "
                f"{_REDOWNLOAD}"
            )
        if not piece:
            raise EngineError(f"{origin}: vocabulary piece {index} is empty; {_REDOWNLOAD}")
        if piece in seen:
            raise EngineError(
                f"{origin}: vocabulary piece {_short(piece)} appears twice (again at id {index}); "
                f"{_REDOWNLOAD}"
            )
        seen.add(piece)
    return tokens


def _scores(metadata: Mapping[str, object], origin: str, count: int) -> list[float]:
    scores = _same_length_list(metadata, "tokenizer.ggml.scores", origin, count)
    for index, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise EngineError(
                f"{origin}: tokenizer.ggml.scores[{index}] is {_short(score)}, not a number; "
                f"{_REDOWNLOAD}"
            )
    return [float(score) for score in scores]


def _types(metadata: Mapping[str, object], origin: str, count: int) -> list[int]:
    types = _same_length_list(metadata, "tokenizer.ggml.token_type", origin, count)
    for index, kind in enumerate(types):
        if isinstance(kind, bool) or not isinstance(kind, int) or not NORMAL <= kind <= BYTE:
            raise EngineError(
                f"{origin}: tokenizer.ggml.token_type[{index}] is {_short(kind)}, not a token "
                f"type 1-6; {_REDOWNLOAD}"
            )
    return types


def _same_length_list(metadata: Mapping[str, object], key: str, origin: str, count: int) -> list:
    values = metadata.get(key)
    if values is None:
        raise EngineError(f"{origin} has no {key}; {_REDOWNLOAD}")
    if not isinstance(values, list):
        raise EngineError(f"{origin}: {key} is not a list; {_REDOWNLOAD}")
    if len(values) != count:
        raise EngineError(
            f"{origin}: {key} has {len(values):,} entries for {count:,} vocabulary pieces; "
            f"{_REDOWNLOAD}"
        )
    return values


def _check_bytes(tokens: list[str], types: list[int], origin: str) -> int:
    """The number of byte pieces: none, or all 256 (SentencePiece's byte fallback needs all)."""
    byte_pieces = [piece for piece, kind in zip(tokens, types, strict=True) if kind == BYTE]
    for piece in byte_pieces:
        if not _BYTE_PIECE.fullmatch(piece):
            raise EngineError(
                f"{origin}: byte piece {_short(piece)} is not of the form <0xXX>; {_REDOWNLOAD}"
            )
    if byte_pieces and len(byte_pieces) != 256:
        raise EngineError(
            f"{origin} has {len(byte_pieces)} byte pieces; byte fallback needs all 256 "
            f"(<0x00> to <0xFF>); {_REDOWNLOAD}"
        )
    return len(byte_pieces)


def _unknown_id(types: list[int], origin: str) -> int:
    unknown = [index for index, kind in enumerate(types) if kind == UNKNOWN]
    if len(unknown) != 1:
        raise EngineError(
            f"{origin} has {len(unknown)} unknown-token pieces; a SentencePiece vocabulary has "
            f"exactly one; {_REDOWNLOAD}"
        )
    return unknown[0]


def _special_id(
    metadata: Mapping[str, object], name: str, default: int, count: int, origin: str
) -> int:
    value = metadata.get(f"tokenizer.ggml.{name}", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        raise EngineError(
            f"{origin}: tokenizer.ggml.{name} is {_short(value)}, outside the vocabulary of "
            f"{count:,} pieces; {_REDOWNLOAD}"
        )
    return value


def _pad_id(metadata: Mapping[str, object], count: int, taken: set[int]) -> int:
    """The padding id, or -1: it never changes encoding, so an odd value is simply ignored."""
    value = metadata.get("tokenizer.ggml.padding_token_id", -1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        return -1
    return -1 if value in taken else value


def _flag(metadata: Mapping[str, object], key: str, default: bool, origin: str) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, bool):
        raise EngineError(f"{origin}: {key} is {_short(value)}, not true or false; {_REDOWNLOAD}")
    return value


def _short(value: object) -> str:
    """A value for a one-line message: repr, cut short, with no raw newlines."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
