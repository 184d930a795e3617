"""engine.gguf.reader against files written by gguf-py's own GGUFWriter (the format's reference).

Every metadata value type round-trips, tensors of several types and shapes come back as the
writer's exact bytes (zero-copy views, shapes in torch order), and the file is never changed.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.gguf.quant_types import GGMLType, block_shape, row_bytes
from engine.gguf.reader import GGUFFile, TensorInfo, is_gguf

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _random_blocks(rng, qtype: GGMLType, rows: int, cols: int) -> np.ndarray:
    """Random valid blocks: gguf-py's quantize where it has one, else random bytes."""
    try:
        data = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    except NotImplementedError:
        weights, nbytes = block_shape(qtype)
        data = rng.integers(0, 256, (rows, cols // weights * nbytes), dtype=np.uint8)
    return np.ascontiguousarray(data)


METADATA = [
    ("test.u8", 250, VT.UINT8),
    ("test.i8", -100, VT.INT8),
    ("test.u16", 65000, VT.UINT16),
    ("test.i16", -32000, VT.INT16),
    ("test.u32", 4_000_000_000, VT.UINT32),
    ("test.i32", -2_000_000_000, VT.INT32),
    ("test.f32", 0.1, VT.FLOAT32),
    ("test.bool_true", True, VT.BOOL),
    ("test.bool_false", False, VT.BOOL),
    ("test.string", "héllo, wörld ✓ 🦙", VT.STRING),
    ("test.empty_string", "", VT.STRING),
    ("test.u64", 2**64 - 1, VT.UINT64),
    ("test.i64", -(2**63), VT.INT64),
    ("test.f64", 0.1, VT.FLOAT64),
]
ARRAYS = [
    ("test.arr_u8", [0, 1, 255], VT.UINT8),
    ("test.arr_i8", [-128, 0, 127], VT.INT8),
    ("test.arr_u16", [0, 65535], VT.UINT16),
    ("test.arr_i16", [-32768, 32767], VT.INT16),
    ("test.arr_u32", [1, 2, 2**32 - 1], VT.UINT32),
    ("test.arr_i32", [-5, 6], VT.INT32),
    ("test.arr_f32", [0.5, -1.25, 3.0], VT.FLOAT32),
    ("test.arr_bool", [True, False, True], VT.BOOL),
    ("test.arr_str", ["<unk>", "<s>", "▁the", "", "日本"], VT.STRING),
    ("test.arr_u64", [2**64 - 1, 0], VT.UINT64),
    ("test.arr_i64", [-(2**63), 2**63 - 1], VT.INT64),
    ("test.arr_f64", [1e300, -2.5], VT.FLOAT64),
]
TENSORS = [  # name, torch shape, type
    ("norm.weight", (64,), GGMLType.F32),
    ("f16.weight", (3, 64), GGMLType.F16),
    ("bf16.weight", (2, 3, 32), GGMLType.BF16),
    ("q8.weight", (5, 64), GGMLType.Q8_0),
    ("q4_0.weight", (2, 2, 2, 32), GGMLType.Q4_0),
    ("q4k.weight", (3, 512), GGMLType.Q4_K),
    ("q6k.weight", (256,), GGMLType.Q6_K),
    ("q5k.weight", (2, 256), GGMLType.Q5_K),
]


def write_file(path: Path, alignment: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A GGUF file with every metadata type and TENSORS; returns each tensor's bytes as written."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, value, vtype in METADATA:
        writer.add_key_value(key, value, vtype)
    for key, value, vtype in ARRAYS:
        writer.add_key_value(key, value, VT.ARRAY, sub_type=vtype)
    written = {}
    for name, shape, qtype in TENSORS:
        if qtype in (GGMLType.F32, GGMLType.F16):
            dt = np.float32 if qtype == GGMLType.F32 else np.float16
            data = rng.standard_normal(shape).astype(dt)
            writer.add_tensor(name, data)
        else:
            data = _random_blocks(rng, QT(int(qtype)), math.prod(shape[:-1]), shape[-1])
            data = data.reshape(*shape[:-1], -1)
            writer.add_tensor(name, data, raw_dtype=QT(int(qtype)))
        written[name] = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def test_metadata_round_trips_every_value_type(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    write_file(path)
    with GGUFFile(path) as f:
        assert f.version == 3
        assert f.alignment == 32
        md = f.metadata
        assert md["general.architecture"] == "llama"
        for key, value, vtype in METADATA:
            if vtype == VT.FLOAT32:
                assert md[key] == float(np.float32(value))
            else:
                assert md[key] == value, key
            assert type(md[key]) is type(value), key
        for key, value, vtype in ARRAYS:
            if vtype == VT.FLOAT32:
                value = [float(np.float32(v)) for v in value]
            assert md[key] == value, key
            assert isinstance(md[key], list)
        # the same numbers as gguf-py's reader, key for key
        reference = gguf.GGUFReader(str(path))
        assert list(md) == [k for k in reference.fields if not k.startswith("GGUF.")]


def test_tensors_are_the_writers_bytes_in_torch_order(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    written = write_file(path)
    before = _sha(path)
    with GGUFFile(path) as f:
        assert list(f.tensors) == [name for name, _, _ in TENSORS]
        reference = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        for name, shape, qtype in TENSORS:
            info = f.tensors[name]
            assert isinstance(info, TensorInfo)
            assert info.shape == shape and info.qtype == qtype
            assert info.nbytes == math.prod(shape[:-1]) * row_bytes(qtype, shape[-1])
            assert info.offset % f.alignment == 0
            assert info.offset == reference[name].data_offset
            assert tuple(reversed(shape)) == tuple(int(d) for d in reference[name].shape)
            raw = f.raw(name)
            assert raw.dtype == torch.uint8
            rows = math.prod(shape[:-1])
            assert raw.shape == (rows, info.nbytes // rows)
            assert bytes(raw.reshape(-1).numpy()) == written[name].tobytes()
        # a linear weight is (out_features, in_features): rows of the innermost dimension
        assert f.raw("q4k.weight").shape == (3, row_bytes(GGMLType.Q4_K, 512))
        assert f.raw("q6k.weight").shape == (1, 210)
    assert _sha(path) == before


def test_raw_is_zero_copy_and_the_file_never_changes(tmp_path: Path) -> None:
    path = tmp_path / "z.gguf"
    write_file(path)
    before = _sha(path)
    f = GGUFFile(path)
    a = f.raw("q8.weight")
    b = f.raw("q8.weight")
    assert a.data_ptr() == b.data_ptr()  # views of one mapping, not copies
    original = a.clone()
    a.fill_(0xAB)  # written in memory (copy-on-write), never to the file
    assert torch.equal(b, a)
    f.close()
    assert torch.equal(a, torch.full_like(a, 0xAB))  # views outlive close()
    del a, b
    assert _sha(path) == before
    with GGUFFile(path) as again:
        assert torch.equal(again.raw("q8.weight"), original)
    assert _sha(path) == before


def test_custom_alignment_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "a.gguf"
    written = write_file(path, alignment=64)
    with GGUFFile(path) as f:
        assert f.alignment == 64
        for name, info in f.tensors.items():
            assert info.offset % 64 == 0
            assert bytes(f.raw(name).reshape(-1).numpy()) == written[name].tobytes()


def test_missing_tensor_and_closed_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_file(path)
    f = GGUFFile(path)
    with pytest.raises(EngineError, match="has no tensor 'nope'"):
        f.raw("nope")
    f.close()
    f.close()  # twice is fine
    with pytest.raises(EngineError, match="closed"):
        f.raw("q8.weight")


def test_is_gguf(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    write_file(path)
    assert is_gguf(path)
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert not is_gguf(other)
    assert not is_gguf(tmp_path)  # a folder
    assert not is_gguf(tmp_path / "absent.gguf")
    (tmp_path / "short.gguf").write_bytes(b"GG")
    assert not is_gguf(tmp_path / "short.gguf")


def test_vocabulary_metadata_reads_fast(tmp_path: Path) -> None:
    """A 7B file's 32000-entry tokens/scores/types arrays: well under a second."""
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"▁token{i}" for i in range(32000)])
    writer.add_token_scores([-float(i) for i in range(32000)])
    writer.add_token_types([1] * 32000)
    writer.add_tensor("x", np.zeros(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        with GGUFFile(path) as f:
            md = f.metadata
        best = min(best, time.perf_counter() - start)
    assert md["tokenizer.ggml.tokens"][31999] == "▁token31999"
    assert md["tokenizer.ggml.scores"][5] == -5.0
    assert md["tokenizer.ggml.token_type"] == [1] * 32000
    assert best < 0.5, f"metadata of a 32000-token vocabulary took {best:.3f} s"


def _mapped(path: Path) -> bool:
    with open("/proc/self/maps") as maps:
        return any(str(path) in line for line in maps)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_close_unmaps_once_no_view_is_left(tmp_path: Path) -> None:
    path = tmp_path / "u.gguf"
    write_file(path)
    f = GGUFFile(path)
    view = f.raw("q8.weight")
    assert _mapped(path)
    f.close()
    assert _mapped(path)  # a live view keeps its pages (never a dangling pointer)
    assert int(view.sum()) >= 0
    del view
    assert not _mapped(path)
    with GGUFFile(path) as g:
        g.raw("q4k.weight")  # dropped at once
    assert not _mapped(path)
    # a refused file leaves nothing mapped either
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EngineError):
        GGUFFile(bad)
    assert not _mapped(bad)
