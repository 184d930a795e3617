"""The streaming decoder: pieces always add up to decode(all ids), with no U+FFFD mid-stream."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.text.tokenizer import REPLACEMENT, StreamDecoder, Tokenizer


@pytest.fixture(scope="module")
def tok(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


def stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    decoder = StreamDecoder(tok)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(st.integers(min_value=0, max_value=511), max_size=40))
def test_random_ids_stream_to_the_full_decode(tok: Tokenizer, ids: list[int]) -> None:
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)


byte_ids = st.integers(min_value=3, max_value=3 + 255)  # the <0x00>..<0xFF> pieces


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(st.one_of(byte_ids, st.integers(0, 511)), max_size=30))
def test_byte_heavy_sequences(tok: Tokenizer, ids: list[int]) -> None:
    assert "".join(stream(tok, ids)) == tok.decode(ids)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30))
def test_any_text_round_trips_without_replacement_chars(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, bos=False)
    pieces = stream(tok, ids)
    full = tok.decode(ids)
    assert "".join(pieces) == full
    if REPLACEMENT not in full:
        assert all(REPLACEMENT not in p for p in pieces)


@pytest.mark.parametrize(
    "text",
    [
        "Hello 😀 world 🦙!",
        "日本語のテキスト 中文",
        " leading space",
        "two  spaces\nnewline",
        "café über ß",
    ],
)
def test_emoji_and_cjk(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, bos=True, eos=True)
    assert any(tok.sp.is_byte(i) for i in ids) or text.isascii()
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert all(REPLACEMENT not in p for p in pieces)
    # A multi-byte character appears whole, in the step that completes it.
    if "😀" in text:
        assert any("😀" in p for p in pieces)


def test_display_text(tok: Tokenizer) -> None:
    newline = tok.sp.piece_to_id("<0x0A>")
    assert tok.display_text(newline) == "\n"
    assert tok.display_text(tok.sp.piece_to_id("<0xF0>")) == "<0xF0>"
    assert tok.display_text(tok.bos_id) == "<s>"
    word = tok.sp.piece_to_id("▁world")
    assert tok.display_text(word) == " world"


def test_encode_adds_bos_and_eos(tok: Tokenizer) -> None:
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == tok.bos_id == 1 and ids[-1] == tok.eos_id == 2
    assert tok.decode(ids) == "hello"


def test_space_after_control_tokens_mid_stream(tok: Tokenizer) -> None:
    """BOS/EOS decode to nothing; the space of the piece after them must still be streamed."""
    word = tok.encode("world", bos=False)
    assert tok.piece(word[0]).startswith("▁")
    for ids in (
        [0, tok.bos_id, *word],
        [*tok.encode("hello", bos=False), tok.eos_id, tok.bos_id, *word],
        [tok.bos_id, *word, tok.eos_id, *word],
    ):
        assert "".join(stream(tok, ids)) == tok.decode(ids), ids
