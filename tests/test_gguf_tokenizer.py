"""A GGUF file's vocabulary rebuilt as a SentencePiece model encodes exactly like the original.

The files are written as llama.cpp's converter writes them: the session's trained SentencePiece
model (its normaliser is Llama 2's: identity, dummy prefix, extra whitespace kept) is read piece by
piece as `convert_hf_to_gguf.py`'s `_create_vocab_sentencepiece` does (id -> piece, score, and a
type from is_unknown/is_control/is_unused/is_byte), stored with `gguf.GGUFWriter` beside one tiny
tensor, and read back with `gguf.GGUFReader` (the independent reference) and with the engine's
own `GGUFFile`. The original `tokenizer.model` is the reference for every id.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.gguf.vocab import MAX_PIECES, add_bos_token, sentencepiece_proto
from engine.text.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

# The texts the existing tokenizer tests use (test_tokenizer_stream, test_chat_format) and more.
CASES = [
    "Hello 😀 world 🦙!",
    "日本語のテキスト 中文",
    " leading space",
    "two  spaces\nnewline",
    "café über ß",
    "[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST] Hello! ",
    "[INST] Bye [/INST]",
    "[INST] Hi [/INST]",
    "three\nfour",
    "012HelloHello",
    "",
    " ",
    "   ",
    "trailing space ",
    "  leading and trailing  ",
    "tabs\tand\t\ttabs",
    "\t",
    "\n",
    "\n\n\nnewlines\n\n",
    "\r\nwindows\r\n",
    "a     run      of        spaces",
    "<s>",
    "</s>",
    "<unk>",
    "<s>[INST] literal specials </s>",
    "<0x41> not a byte",
    "▁already▁escaped",
    "Ωmega € → naïve héllo",
    "👩‍👩‍👧‍👦 family, ❤️ heart, 🇫🇷 flag",
    "한국어 العربية हिन्दी ไทย",
    "\u00a0non-breaking\u3000ideographic space",
    "1234567890 3.14159",
    "\x00\x01 control \x7f",
    "\U0010fffd private use",
    "e\u0301 combining",
    "The loop query key value softmax token model cache chat llama hello world python.",
]

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    ".,;:!?'\"()[]{}<>/\\|-_+=*&^%$#@~`",
    " " * 8 + "\t\n\r\u00a0\u3000",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœ",
    "αβγδεζηθικλμνξοπρστυφχψωΩΣΔ",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    "日本語中文字漢語的一是不了人我在有他这为之大来以个中上们",
    "あいうえおかきくけこアイウエオカキクケコ",
    "한국어가나다라마바사",
    "العربيةمرحبا",
    "हिन्दीनमस्ते",
    "😀🦙👍🏽❤️‍🔥🇯🇵€→∑∫√",
    "▁<>s/0x",
]


def llama_cpp_vocab(model_path: Path) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and token types exactly as llama.cpp's converter reads them."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(str(model_path))
    tokens, scores, types = [], [], []
    for token_id in range(sp.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(token_id):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(token_id):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(token_id):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(token_id):
            kind = gguf.TokenType.BYTE
        tokens.append(sp.IdToPiece(token_id))
        scores.append(sp.GetScore(token_id))
        types.append(int(kind))
    return tokens, scores, types


def write_gguf(
    path: Path,
    tokens: list,
    scores: list[float],
    types: list[int],
    *,
    model: str = "llama",
    space_prefix: bool | None = None,
    special: dict[str, int] | None = None,
    extra: Callable | None = None,
) -> Path:
    """A GGUF file with this vocabulary and one tiny tensor, written by gguf-py's writer."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = {"bos": 1, "eos": 2, "unk": 0} if special is None else special
    if "bos" in special:
        writer.add_bos_token_id(special["bos"])
    if "eos" in special:
        writer.add_eos_token_id(special["eos"])
    if "unk" in special:
        writer.add_unk_token_id(special["unk"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if space_prefix is not None:
        writer.add_add_space_prefix(space_prefix)
    if extra is not None:
        extra(writer)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_py_metadata(path: Path) -> dict[str, object]:
    """The file's key/values as plain Python values, read by gguf-py's reader."""
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}


def engine_metadata(path: Path) -> dict[str, object]:
    from engine.gguf.reader import GGUFFile

    with GGUFFile(path) as file:
        return dict(file.metadata)


READERS = {"gguf-py": gguf_py_metadata, "engine": engine_metadata}


def from_file(path: Path, read: Callable = gguf_py_metadata) -> Tokenizer:
    return Tokenizer.from_proto(sentencepiece_proto(read(path), str(path)), path)


def random_texts(count: int, seed: int) -> list[str]:
    """Strings mixing scripts, emoji, digits, punctuation and whitespace runs."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 6)):
            alphabet = rng.choice(ALPHABETS)
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
        texts.append("".join(parts))
    return texts


@pytest.fixture(scope="module")
def vocab(tokenizer_path: Path) -> tuple[list[str], list[float], list[int]]:
    return llama_cpp_vocab(tokenizer_path)


@pytest.fixture(scope="module")
def reference(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory: pytest.TempPathFactory, vocab) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf_vocab") / "model.gguf", *vocab)


@pytest.fixture(scope="module", params=sorted(READERS))
def rebuilt(request: pytest.FixtureRequest, gguf_path: Path) -> Tokenizer:
    return from_file(gguf_path, READERS[request.param])


def assert_same_tokenizer(ours: Tokenizer, reference: Tokenizer, texts: list[str]) -> None:
    assert ours.vocab_size == reference.vocab_size
    assert (ours.bos_id, ours.eos_id) == (reference.bos_id, reference.eos_id)
    assert ours.sp.unk_id() == reference.sp.unk_id()
    for i in range(reference.vocab_size):
        assert ours.piece(i) == reference.piece(i), i
        assert ours.is_control(i) == reference.is_control(i), i
        assert ours.sp.is_byte(i) == reference.sp.is_byte(i), i
        assert ours.sp.is_unknown(i) == reference.sp.is_unknown(i), i
        assert ours.sp.get_score(i) == reference.sp.get_score(i), i
    for text in texts:
        ids = reference.encode(text, bos=False)
        assert ours.encode(text, bos=False) == ids, text
        assert ours.decode(ids) == reference.decode(ids), text
        assert ours.encode(text, bos=True, eos=True) == reference.encode(text, bos=True, eos=True)


def test_the_trained_reference_has_llamas_normaliser(tokenizer_path: Path) -> None:
    """The reference is the trained model itself: its normaliser already is Llama 2's."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer_path.read_bytes())
    spec = proto.normalizer_spec
    assert spec.name == "identity" and not spec.precompiled_charsmap
    assert spec.add_dummy_prefix and not spec.remove_extra_whitespaces and spec.escape_whitespaces
    assert proto.trainer_spec.model_type == proto.trainer_spec.BPE
    assert proto.trainer_spec.byte_fallback
    assert not proto.trainer_spec.treat_whitespace_as_suffix


def test_cases_encode_like_the_original(rebuilt: Tokenizer, reference: Tokenizer) -> None:
    assert_same_tokenizer(rebuilt, reference, CASES)
    # The cases really exercise byte fallback and literal special-token text.
    ids = reference.encode("Hello 😀 world 🦙!", bos=False)
    assert any(reference.sp.is_byte(i) for i in ids)
    assert reference.bos_id not in rebuilt.encode("<s>[INST] hi", bos=False)


def test_random_texts_encode_like_the_original(rebuilt: Tokenizer, reference: Tokenizer) -> None:
    texts = random_texts(2000, seed=23)
    for text in texts:
        ids = reference.encode(text, bos=False)
        assert rebuilt.encode(text, bos=False) == ids, repr(text)
        assert rebuilt.decode(ids) == reference.decode(ids), repr(text)


def test_random_ids_decode_like_the_original(rebuilt: Tokenizer, reference: Tokenizer) -> None:
    rng = random.Random(5)
    for _ in range(500):
        ids = [rng.randrange(reference.vocab_size) for _ in range(rng.randint(0, 30))]
        assert rebuilt.decode(ids) == reference.decode(ids), ids
        assert [rebuilt.display_text(i) for i in ids] == [reference.display_text(i) for i in ids]


def test_rebuilt_proto_is_llamas(gguf_path: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sentencepiece_proto(gguf_py_metadata(gguf_path), str(gguf_path)))
    spec = proto.normalizer_spec
    assert (spec.name, spec.precompiled_charsmap) == ("identity", b"")
    assert spec.add_dummy_prefix and not spec.remove_extra_whitespaces and spec.escape_whitespaces
    trainer = proto.trainer_spec
    assert trainer.model_type == trainer.BPE and trainer.byte_fallback
    assert (trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id) == (0, 1, 2, -1)
    assert (trainer.unk_piece, trainer.bos_piece, trainer.eos_piece) == ("<unk>", "<s>", "</s>")


def test_without_space_prefix(tmp_path: Path, tokenizer_path: Path, vocab) -> None:
    """add_space_prefix false = the original model with add_dummy_prefix false."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer_path.read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    reference_path = tmp_path / "no_prefix.model"
    reference_path.write_bytes(proto.SerializeToString())
    reference = Tokenizer(reference_path)

    path = write_gguf(tmp_path / "no_prefix.gguf", *vocab, space_prefix=False)
    texts = CASES + random_texts(300, seed=7)
    for read in READERS.values():
        assert read(path)["tokenizer.ggml.add_space_prefix"] is False
        assert_same_tokenizer(from_file(path, read), reference, texts)
    assert reference.encode("hello", bos=False) != Tokenizer(tokenizer_path).encode(
        "hello", bos=False
    )


def test_explicit_space_prefix_and_flags(tmp_path: Path, vocab, reference: Tokenizer) -> None:
    path = write_gguf(tmp_path / "prefix.gguf", *vocab, space_prefix=True)
    metadata = gguf_py_metadata(path)
    assert add_bos_token(metadata) is True
    assert_same_tokenizer(from_file(path), reference, CASES)
    assert add_bos_token({}) is True
    assert add_bos_token({"tokenizer.ggml.add_bos_token": False}) is False


def test_converter_padding_pieces(tmp_path: Path, vocab, reference: Tokenizer) -> None:
    """The converter pads a vocabulary to config.json's size with unused '[PADn]' pieces."""
    tokens, scores, types = vocab
    count = len(tokens)
    tokens = tokens + [f"[PAD{i}]" for i in range(count, count + 3)]
    scores = scores + [-10000.0] * 3
    types = types + [int(gguf.TokenType.UNUSED)] * 3
    path = write_gguf(tmp_path / "padded.gguf", tokens, scores, types)
    ours = from_file(path)
    assert ours.vocab_size == count + 3
    for text in CASES + ["[PAD512] [PAD513]"] + random_texts(200, seed=3):
        assert ours.encode(text) == reference.encode(text), text
    assert ours.piece(count) == "[PAD512]"


def test_added_user_defined_pieces(tmp_path: Path, tokenizer_path: Path, vocab) -> None:
    """Tokens from added_tokens.json, which the converter stores as user-defined (type 4)."""
    from sentencepiece import sentencepiece_model_pb2

    added = ["<|im_start|>", "<|im_end|>", "▁hello▁world"]
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer_path.read_bytes())
    for piece in added:
        proto.pieces.add(piece=piece, score=0.0, type=proto.pieces[0].USER_DEFINED)
    (tmp_path / "added.model").write_bytes(proto.SerializeToString())
    reference = Tokenizer(tmp_path / "added.model")
    tokens, scores, types = vocab
    path = write_gguf(
        tmp_path / "added.gguf",
        tokens + added,
        scores + [0.0] * len(added),
        types + [int(gguf.TokenType.USER_DEFINED)] * len(added),
    )
    texts = CASES + ["<|im_start|>user\nhello world<|im_end|>", "hello world hello world"]
    assert_same_tokenizer(from_file(path), reference, texts + random_texts(200, seed=11))
    assert reference.encode("<|im_start|>", bos=False)[-1] == len(tokens)


def test_other_special_ids_and_padding(tmp_path: Path, vocab, reference: Tokenizer) -> None:
    """BOS/EOS come from the file's ids even when the pieces are not named <s> and </s>."""
    tokens, scores, types = vocab
    tokens = ["<|begin|>" if t == "<s>" else "<|end|>" if t == "</s>" else t for t in tokens]
    extra = lambda writer: writer.add_pad_token_id(2)  # noqa: E731 - same as EOS: ignored
    path = write_gguf(tmp_path / "renamed.gguf", tokens, scores, types, extra=extra)
    ours = from_file(path)
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    assert ours.piece(1) == "<|begin|>" and ours.is_control(1)
    for text in CASES:
        assert ours.encode(text, eos=True) == reference.encode(text, eos=True), text


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)


@pytest.mark.parametrize("space_prefix", [True, False])
def test_chat_prompts_match(
    tmp_path: Path, tokenizer_path: Path, vocab, space_prefix: bool
) -> None:
    """Chat prompts with llama.cpp's GGUF rule (every segment encoded as its own text) match the
    original model's, and never need the GGUF file to be read as a SentencePiece model."""
    from sentencepiece import sentencepiece_model_pb2

    from engine.text.chat import Message, chat_prompt_ids
    from tests.fixtures.models import LLAMA2_CHAT_TEMPLATE

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer_path.read_bytes())
    proto.normalizer_spec.add_dummy_prefix = space_prefix
    (tmp_path / "ref.model").write_bytes(proto.SerializeToString())
    reference = Tokenizer(tmp_path / "ref.model")
    path = write_gguf(tmp_path / "chat.gguf", *vocab, space_prefix=space_prefix)
    ours = from_file(path, engine_metadata)
    reference.prefix_rule = ours.prefix_rule = "always"
    messages = [
        Message("system", "Be brief."),
        Message("user", "Hi  there 😀"),
        Message("assistant", "Hello!\n日本"),
        Message("user", " <s>[INST] literal "),
    ]
    for template in (None, LLAMA2_CHAT_TEMPLATE, CHATML):
        expected = chat_prompt_ids(reference, messages, template)
        assert chat_prompt_ids(ours, messages, template) == expected, template


def test_tokenizer_from_path_is_unchanged(tokenizer_path: Path, tmp_path: Path) -> None:
    tok = Tokenizer(tokenizer_path)
    assert tok.path == tokenizer_path and tok.prefix_rule == "first"
    with pytest.raises(EngineError, match="needs tokenizer.model"):
        Tokenizer(tmp_path / "missing.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(EngineError, match="is not a SentencePiece model"):
        Tokenizer(tmp_path / "bad.model")


def test_from_proto_refuses_garbage(tmp_path: Path) -> None:
    origin = tmp_path / "x.gguf"
    with pytest.raises(EngineError) as info:
        Tokenizer.from_proto(b"\x0a\x05hello garbage \xff\xff", origin)
    assert str(origin) in str(info.value) and "\n" not in str(info.value)


# -- refused vocabularies -------------------------------------------------------------------------


def metadata_of(vocab, **changes: object) -> dict[str, object]:
    tokens, scores, types = vocab
    base: dict[str, object] = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": list(tokens),
        "tokenizer.ggml.scores": list(scores),
        "tokenizer.ggml.token_type": list(types),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    for key, value in changes.items():
        full = "tokenizer.ggml." + key
        if value is None:
            base.pop(full, None)
        else:
            base[full] = value
    return base


def replaced(values: list, index: int, value: object) -> list:
    values = list(values)
    values[index] = value
    return values


def refused(metadata: dict[str, object], fragment: str) -> None:
    origin = "/models/odd-file.gguf"
    with pytest.raises(EngineError) as info:
        sentencepiece_proto(metadata, origin)
    message = str(info.value)
    assert fragment in message, message
    assert origin in message and "\n" not in message


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"model": "gpt2"}, "Llama 3 files use a different tokenizer"),
        ({"model": "bert"}, "'bert' tokenizer"),
        ({"model": 7}, "7 tokenizer"),
        ({"model": None}, "no tokenizer"),
        ({"tokens": None}, "no vocabulary"),
        ({"tokens": []}, "not a list"),
        ({"tokens": "abc"}, "not a list"),
        ({"scores": None}, "no tokenizer.ggml.scores"),
        ({"token_type": None}, "no tokenizer.ggml.token_type"),
        ({"eos_token_id": 512}, "eos_token_id is 512, outside the vocabulary"),
        ({"bos_token_id": -1}, "bos_token_id is -1, outside"),
        ({"bos_token_id": "1"}, "bos_token_id is '1'"),
        ({"add_space_prefix": 1}, "not true or false"),
    ],
)
def test_refused_metadata(vocab, change: dict, fragment: str) -> None:
    refused(metadata_of(vocab, **change), fragment)


def test_refused_lists(vocab) -> None:
    tokens, scores, types = vocab
    refused(metadata_of(vocab, scores=scores[:-1]), "scores has 511 entries for 512")
    refused(metadata_of(vocab, token_type=types + [1]), "token_type has 513 entries for 512")
    refused(metadata_of(vocab, tokens=replaced(tokens, 300, 42)), "piece 300 is a int")
    refused(metadata_of(vocab, tokens=replaced(tokens, 300, "")), "piece 300 is empty")
    refused(metadata_of(vocab, tokens=replaced(tokens, 400, tokens[300])), "appears twice")
    refused(metadata_of(vocab, scores=replaced(scores, 9, "x")), "scores[9] is 'x'")
    refused(metadata_of(vocab, scores=replaced(scores, 9, float("nan"))), "scores[9] is nan")
    refused(metadata_of(vocab, token_type=replaced(types, 9, 7)), "token_type[9] is 7")
    refused(metadata_of(vocab, token_type=replaced(types, 9, 0)), "token_type[9] is 0")
    byte_at = tokens.index("<0x41>")
    refused(metadata_of(vocab, tokens=replaced(tokens, byte_at, "<0x4g>")), "'<0x4g>' is not")
    refused(metadata_of(vocab, tokens=replaced(tokens, byte_at, "<0x4a>")), "'<0x4a>' is not")
    refused(metadata_of(vocab, tokens=replaced(tokens, byte_at, "<41>")), "'<41>' is not of")
    refused(metadata_of(vocab, token_type=replaced(types, byte_at, 1)), "255 byte pieces")
    refused(metadata_of(vocab, token_type=replaced(types, 0, 3)), "0 unknown-token pieces")
    refused(metadata_of(vocab, token_type=replaced(types, 300, 2)), "has 2 unknown")


def test_absurd_vocabulary_is_refused_before_it_is_read(vocab) -> None:
    started = time.perf_counter()
    refused(metadata_of(vocab, tokens=["x"] * (MAX_PIECES + 1)), "claims 1,000,001 vocabulary")
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("reader", sorted(READERS))
def test_refused_files(tmp_path: Path, vocab, reader: str) -> None:
    """The same refusals for real files, read by gguf-py's reader and by the engine's."""
    tokens, scores, types = vocab
    read = READERS[reader]
    cases = {
        "llama3.gguf": (
            write_gguf(tmp_path / "llama3.gguf", tokens, scores, types, model="gpt2"),
            "Llama 3 files use a different tokenizer",
        ),
        "ints.gguf": (
            write_gguf(tmp_path / "ints.gguf", list(range(512)), scores, types),
            "piece 0 is a int",
        ),
        "short.gguf": (
            write_gguf(tmp_path / "short.gguf", tokens, scores[:100], types),
            "scores has 100 entries",
        ),
        "dupe.gguf": (
            write_gguf(tmp_path / "dupe.gguf", replaced(tokens, 3, "<0x01>"), scores, types),
            "appears twice",
        ),
        "bos.gguf": (
            write_gguf(tmp_path / "bos.gguf", tokens, scores, types, special={"bos": 9999}),
            "bos_token_id is 9999",
        ),
    }
    for name, (path, fragment) in cases.items():
        with pytest.raises(EngineError) as info:
            sentencepiece_proto(read(path), str(path))
        message = str(info.value)
        assert fragment in message and name in message and "\n" not in message, message


def test_missing_ids_default_to_llamas(tmp_path: Path, vocab, reference: Tokenizer) -> None:
    path = write_gguf(tmp_path / "noids.gguf", *vocab, special={})
    ours = from_file(path)
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    assert ours.encode("Hello 😀") == reference.encode("Hello 😀")


# -- cost at Llama 2's size ------------------------------------------------------------------------


def synthetic_llama_vocab(vocab, size: int = 32000) -> tuple[list[str], list[float], list[int]]:
    """The trained vocabulary grown to `size` with made-up word pieces of falling score."""
    tokens, scores, types = (list(v) for v in vocab)
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyzéüñ日本中文"
    seen = set(tokens)
    score = min(scores) - 1
    while len(tokens) < size:
        piece = ("▁" if rng.random() < 0.6 else "") + "".join(
            rng.choice(letters) for _ in range(rng.randint(2, 9))
        )
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        scores.append(score)
        types.append(1)
        score -= 1
    return tokens, scores, types


def test_llama_sized_vocabulary_builds_fast(tmp_path: Path, vocab) -> None:
    tokens, scores, types = synthetic_llama_vocab(vocab)
    path = write_gguf(tmp_path / "big.gguf", tokens, scores, types)
    metadata = engine_metadata(path)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        tok = Tokenizer.from_proto(sentencepiece_proto(metadata, str(path)), path)
        best = min(best, time.perf_counter() - started)
    print(f"32000-piece vocabulary: proto + load {best * 1000:.1f} ms")
    assert tok.vocab_size == 32000
    assert tok.decode(tok.encode("hello 日本 world")) == "hello 日本 world"
    assert best < 2.0
