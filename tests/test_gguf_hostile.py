"""Hostile GGUF files: each damage gets one EngineError line naming the file and the problem.

Every case starts from a valid file written by gguf-py's GGUFWriter and patches or truncates its
bytes, so the rest of the file stays realistic; a hypothesis fuzz test then damages the header
region at random and accepts only success or EngineError (never another exception, a crash or a
hang).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.gguf.reader import GGUFFile

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType


def _valid(path: Path, nested: bool = False) -> bytes:
    """A small valid file: strings, arrays, two same-length keys and three same-length tensors."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(32)
    w.add_string("test.name", "hello")
    w.add_uint32("test.dupa", 1)
    w.add_uint32("test.dupb", 2)
    w.add_key_value("test.tokens", ["a", "bb", "ccc"], VT.ARRAY, sub_type=VT.STRING)
    w.add_key_value("test.scores", [0.5, 1.5, 2.5], VT.ARRAY, sub_type=VT.FLOAT32)
    if nested:
        w.add_array("test.nested", [[1, 2], [3]])
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), QT.Q8_0)
    w.add_tensor("t.one", q8, raw_dtype=QT.Q8_0)
    w.add_tensor("t.two", rng.standard_normal((8, 32)).astype(np.float32))
    w.add_tensor("t.thr", rng.standard_normal(16).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _after(data: bytes | bytearray, text: str) -> int:
    """Where the field after the GGUF string `text` (u64 length + bytes) starts."""
    encoded = text.encode()
    at = bytes(data).index(struct.pack("<Q", len(encoded)) + encoded)
    return at + 8 + len(encoded)


def _string_at(data: bytes | bytearray, text: str) -> int:
    """Where the GGUF string `text` starts (its u64 length)."""
    return _after(data, text) - 8 - len(text.encode())


def _put(data: bytearray, at: int, fmt: str, value: object) -> None:
    struct.pack_into("<" + fmt, data, at, value)


def _tensor_field(data: bytearray, name: str, field: str, dim: int = 0) -> int:
    """Offset of a tensor info's n_dims, dims[dim], type or offset."""
    at = _after(data, name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return {
        "n_dims": at,
        "dim": at + 4 + 8 * dim,
        "type": at + 4 + 8 * n_dims,
        "offset": at + 4 + 8 * n_dims + 4,
    }[field]


def _get_offset(data: bytearray, name: str) -> int:
    return struct.unpack_from("<Q", data, _tensor_field(data, name, "offset"))[0]


Patch = Callable[[bytearray], bytearray]


def _patched(fmt: str, where: Callable[[bytearray], int], value: object) -> Patch:
    def patch(data: bytearray) -> bytearray:
        _put(data, where(data), fmt, value)
        return data

    return patch


def _replace(old: bytes, new: bytes) -> Patch:
    def patch(data: bytearray) -> bytearray:
        at = bytes(data).index(old)
        data[at : at + len(old)] = new
        return data

    return patch


def _cut(where: Callable[[bytearray], int]) -> Patch:
    return lambda data: data[: where(data)]


CASES: list[tuple[str, Patch, str]] = [
    ("bad magic", _replace(b"GGUF", b"GGUG"), r"is not a GGUF file \(bad magic bytes\)"),
    ("version 1", _patched("I", lambda d: 4, 1), r"is a GGUF version 1 file"),
    ("version 4", _patched("I", lambda d: 4, 4), r"has GGUF version 4; Loopchat reads versions 2"),
    ("empty", lambda d: bytearray(), r"is empty"),
    ("cut in header", _cut(lambda d: 13), r"truncated in the header \(13 bytes\)"),
    (
        "cut after header",
        _cut(lambda d: 24),
        r"claims 7 metadata entries, more than the 0 bytes after its header could hold; the "
        r"file is truncated or corrupt — download it again",
    ),
    (
        "cut in a key",
        _cut(lambda d: _string_at(d, "test.dupb") + 10),
        r"truncated in the metadata \(key \d of \d+\): a key of 9 bytes, but only 2 bytes",
    ),
    (
        "cut in a value",
        _cut(lambda d: _after(d, "test.name") + 2),
        r"truncated in the metadata \(key 3 of \d+, 'test\.name'\)",
    ),
    (
        "cut in an array",
        _cut(lambda d: _after(d, "test.scores") + 4 + 8 + 5),
        r"truncated in the metadata \(key \d+ of \d+, 'test\.scores'\): an array of 3 float32",
    ),
    (
        "cut in the tensor table",
        _cut(lambda d: _after(d, "t.two") + 6),
        r"truncated in the tensor table \(tensor 2 of 3, 't\.two'\)",
    ),
    (
        "cut in the data",
        _cut(lambda d: len(d) - 10),
        r"tensor 't\.thr' needs bytes \d+ to \d+ but the file ends at byte \d+; the file is "
        r"incomplete or corrupt — download it again",
    ),
    (
        "absurd tensor count",
        _patched("Q", lambda d: 8, 2**60),
        r"claims 1152921504606846976 tensors, more than the \d+ bytes after its header could hold",
    ),
    (
        "absurd kv count",
        _patched("Q", lambda d: 16, 2**63),
        r"claims 9223372036854775808 metadata entries",
    ),
    (
        "absurd key length",
        _patched("Q", lambda d: _string_at(d, "test.dupa"), 2**62),
        r"truncated in the metadata \(key 4 of \d+\): a key of 4611686018427387904 bytes",
    ),
    (
        "absurd string length",
        _patched("Q", lambda d: _after(d, "test.name") + 4, 2**64 - 1),
        r"the string value of 'test\.name' of 18446744073709551615 bytes",
    ),
    (
        "absurd string array count",
        _patched("Q", lambda d: _after(d, "test.tokens") + 8, 2**61),
        r"'test\.tokens'\): an array of 2305843009213693952 strings",
    ),
    (
        "absurd float array count",
        _patched("Q", lambda d: _after(d, "test.scores") + 8, 2**40),
        r"'test\.scores'\): an array of 1099511627776 float32 values",
    ),
    (
        "absurd string in an array",
        _patched("Q", lambda d: _after(d, "test.tokens") + 16, 2**50),
        r"string 0 of 'test\.tokens' of 1125899906842624 bytes",
    ),
    (
        "array of arrays",
        _patched("I", lambda d: _after(d, "test.tokens") + 4, 9),
        r"metadata key 'test\.tokens' holds an array of arrays",
    ),
    (
        "unknown array item type",
        _patched("I", lambda d: _after(d, "test.scores") + 4, 13),
        r"metadata key 'test\.scores' is an array of unknown value type 13",
    ),
    (
        "unknown value type",
        _patched("I", lambda d: _after(d, "test.dupa"), 99),
        r"metadata key 'test\.dupa' has unknown value type 99",
    ),
    (
        "invalid UTF-8 value",
        _replace(b"hello", b"\xffello"),
        r"the string value of 'test\.name' in the metadata .* is not valid UTF-8",
    ),
    (
        "invalid UTF-8 key",
        _replace(b"test.dupb", b"test.\xc3upb"),
        r"a key in the metadata \(key \d of \d+\) is not valid UTF-8",
    ),
    (
        "invalid UTF-8 in a string array",
        _replace(b"ccc", b"c\xe2c"),
        r"string 2 of 'test\.tokens' in the metadata .* is not valid UTF-8",
    ),
    (
        "invalid UTF-8 tensor name",
        _replace(b"t.thr", b"t.\x80hr"),
        r"a tensor name in the tensor table \(tensor 3 of 3\) is not valid UTF-8",
    ),
    ("duplicate key", _replace(b"test.dupb", b"test.dupa"), r"key 'test\.dupa' appears twice"),
    (
        "duplicate tensor",
        _replace(b"t.two", b"t.one"),
        r"tensor 't\.one' appears twice in the tensor table",
    ),
    (
        "0 dimensions",
        _patched("I", lambda d: _tensor_field(d, "t.two", "n_dims"), 0),
        r"tensor 't\.two' has 0 dimensions; GGUF tensors have 1 to 4",
    ),
    (
        "5 dimensions",
        _patched("I", lambda d: _tensor_field(d, "t.two", "n_dims"), 5),
        r"tensor 't\.two' has 5 dimensions",
    ),
    (
        "absurd dimensions",
        _patched("I", lambda d: _tensor_field(d, "t.two", "n_dims"), 2**32 - 1),
        r"tensor 't\.two' has 4294967295 dimensions",
    ),
    (
        "empty dimension",
        _patched("Q", lambda d: _tensor_field(d, "t.two", "dim", 1), 0),
        r"tensor 't\.two' has an empty dimension \(shape \(0, 32\)\)",
    ),
    (
        "overflowing dimensions",
        lambda d: _patched("Q", lambda d: _tensor_field(d, "t.two", "dim", 1), 2**63)(
            _patched("Q", lambda d: _tensor_field(d, "t.two", "dim", 0), 2**63)(d)
        ),
        r"tensor 't\.two' has shape \(9223372036854775808, 9223372036854775808\), more F32 data "
        r"than the whole file",
    ),
    (
        "unknown ggml type",
        _patched("I", lambda d: _tensor_field(d, "t.two", "type"), 99),
        r"tensor 't\.two' has unknown ggml type 99",
    ),
    (
        "retired ggml type",
        _patched("I", lambda d: _tensor_field(d, "t.two", "type"), 4),
        r"tensor 't\.two' has unknown ggml type 4",
    ),
    (
        "row not whole blocks",
        _patched("Q", lambda d: _tensor_field(d, "t.one", "dim", 0), 48),
        r"tensor 't\.one' has rows of 48 weights, not a whole number of Q8_0 blocks of 32",
    ),
    (
        "alignment not a power of two",
        _patched("I", lambda d: _after(d, "general.alignment") + 4, 48),
        r"general\.alignment is 48; it must be a power of two from 1 to 65536",
    ),
    (
        "alignment 0",
        _patched("I", lambda d: _after(d, "general.alignment") + 4, 0),
        r"general\.alignment is 0; it must be a power of two",
    ),
    (
        "alignment too large",
        _patched("I", lambda d: _after(d, "general.alignment") + 4, 2**17),
        r"general\.alignment is 131072",
    ),
    (
        "alignment not an integer",
        _patched("I", lambda d: _after(d, "general.alignment"), 6),  # float32
        r"general\.alignment is [0-9.e-]+; it must be a power of two",
    ),
    (
        "unaligned offset",
        _patched("Q", lambda d: _tensor_field(d, "t.two", "offset"), 1),
        r"tensor 't\.two' starts at data offset 1, not a multiple of "
        r"the file's alignment 32",
    ),
    (
        "offset outside the file",
        _patched("Q", lambda d: _tensor_field(d, "t.thr", "offset"), 2**40),
        r"tensor 't\.thr' needs bytes \d+ to \d+ but the file ends at byte",
    ),
    (
        "offset at the end of u64",
        _patched("Q", lambda d: _tensor_field(d, "t.thr", "offset"), 2**64 - 32),
        r"tensor 't\.thr' needs bytes \d+ to \d+ but the file ends at byte",
    ),
    (
        "overlapping tensors",
        lambda d: _patched(
            "Q", lambda d: _tensor_field(d, "t.thr", "offset"), _get_offset(d, "t.two") + 32
        )(d),
        r"tensor 't\.thr' overlaps tensor 't\.two' in the data section",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_gets_one_line(tmp_path: Path, case: tuple[str, Patch, str]) -> None:
    _, patch, expected = case
    valid = tmp_path / "valid.gguf"
    data = bytearray(_valid(valid))
    with GGUFFile(valid):
        pass  # the unpatched file is fine
    path = tmp_path / "hostile.gguf"
    path.write_bytes(bytes(patch(data)))
    with pytest.raises(EngineError) as info:
        GGUFFile(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert re.search(expected, message), message


def test_nested_array_written_by_gguf_py(tmp_path: Path) -> None:
    path = tmp_path / "nested.gguf"
    _valid(path, nested=True)
    with pytest.raises(EngineError, match=r"'test\.nested' holds an array of arrays"):
        GGUFFile(path)


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="is missing"):
        GGUFFile(tmp_path / "absent.gguf")
    with pytest.raises(EngineError, match="not a regular file"):
        GGUFFile(tmp_path)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.gguf"
        os.mkfifo(fifo)
        with pytest.raises(EngineError, match="not a regular file"):
            GGUFFile(fifo)


_FUZZ_BASE: dict[str, bytes] = {}


def _fuzz_base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if "data" not in _FUZZ_BASE:
        _FUZZ_BASE["data"] = _valid(tmp_path_factory.mktemp("fuzz") / "base.gguf")
    return _FUZZ_BASE["data"]


@pytest.mark.timeout(60)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_header_only_engine_errors(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    base = bytearray(_fuzz_base(tmp_path_factory))
    header_end = _after(base, "t.thr") + 4 + 8 + 4 + 8
    # single bytes, and whole little-endian counts/lengths/offsets with edge values
    value = st.one_of(
        st.integers(0, 255).map(lambda v: bytes([v])),
        st.sampled_from([0, 1, 4, 5, 9, 13, 99, 2**31, 2**32 - 1]).map(
            lambda v: struct.pack("<I", v)
        ),
        st.sampled_from([0, 1, 31, 33, 2**32, 2**63, 2**64 - 1]).map(
            lambda v: struct.pack("<Q", v)
        ),
    )
    writes = data.draw(
        st.lists(st.tuples(st.integers(0, header_end - 1), value), max_size=8), label="writes"
    )
    for at, chunk in writes:
        base[at : at + len(chunk)] = chunk
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(base))), label="cut")
    if cut is not None:
        base = base[:cut]
    path = tmp_path_factory.mktemp("case") / "fuzz.gguf"
    path.write_bytes(bytes(base))
    try:
        with GGUFFile(path) as f:
            for name, info in f.tensors.items():
                raw = f.raw(name)
                assert raw.numel() == info.nbytes
                assert info.offset + info.nbytes <= len(base)
                int(raw.sum())  # every byte handed out is inside the file
    except EngineError as exc:
        assert "\n" not in str(exc)
        assert str(path) in str(exc)


def _handmade(kv_count: int, body: bytes, tensor_count: int = 0) -> bytes:
    """A GGUF v3 header followed by `body` (for limits a patched small file cannot reach)."""
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count) + body


def _key(name: str, vtype: int) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", vtype)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            lambda: _handmade(70_000, bytes(70_000 * 13)),
            r"claims 70000 metadata entries and 0 tensors; Loopchat reads at most 65536",
            id="too many keys",
        ),
        pytest.param(
            lambda: _handmade(
                1, _key("big", 9) + struct.pack("<IQ", 0, 2**22 + 1) + bytes(2**22 + 1)
            ),
            r"metadata key 'big' holds an array of 4194305 items; Loopchat reads at most 4194304",
            id="array too long",
        ),
        pytest.param(
            lambda: _handmade(
                3,
                b"".join(
                    _key(f"a{i}", 9) + struct.pack("<IQ", 0, 3_000_000) + bytes(3_000_000)
                    for i in range(3)
                ),
            ),
            r"metadata key 'a2' holds an array of 3000000 items; .* 8388608 in all",
            id="arrays too long together",
        ),
        pytest.param(
            lambda: _handmade(1, _key("s", 8) + struct.pack("<Q", 2**24 + 1) + bytes(2**24 + 1)),
            r"the string value of 's' in the metadata \(key 1 of 1, 's'\) is 16777217 bytes long",
            id="string too long",
        ),
        pytest.param(
            lambda: _handmade(1, struct.pack("<Q", 2**16) + bytes(2**16) + bytes(16)),
            r"a key in the metadata \(key 1 of 1\) is 65536 bytes long",
            id="key too long",
        ),
    ],
)
def test_limits_no_model_file_comes_near(tmp_path: Path, body, expected: str) -> None:
    path = tmp_path / "big.gguf"
    path.write_bytes(body())
    with pytest.raises(EngineError) as info:
        GGUFFile(path)
    assert "\n" not in str(info.value)
    assert re.search(expected, str(info.value)), str(info.value)


def test_names_in_messages_stay_one_short_line(tmp_path: Path) -> None:
    """Keys and tensor names come from the file: control characters are escaped, long ones cut."""
    path = tmp_path / "names.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("evil\nkey\x1b[2J", 1)
    w.add_uint32("evil\nkez\x1b[2J", 2)
    w.add_tensor("x" * 5000, np.zeros(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(path.read_bytes())
    duplicate = bytes(_replace(b"evil\nkez", b"evil\nkey")(bytearray(data)))
    path.write_bytes(duplicate)
    with pytest.raises(EngineError) as info:
        GGUFFile(path)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert r"metadata key 'evil\nkey\x1b[2J' appears twice" in message
    _put(data, _tensor_field(data, "x" * 5000, "type"), "I", 77)
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError) as info:
        GGUFFile(path)
    message = str(info.value)
    assert f"tensor '{'x' * 80}…' has unknown ggml type 77" in message
    assert len(message) < 400
