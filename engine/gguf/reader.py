"""Read a GGUF file strictly: header, metadata and tensor table checked before any tensor is used.

A GGUF file comes from the internet like any model, so every field is input: each length and
count is checked against the bytes the file has left before anything is read or allocated, each
tensor's type, shape and place in the data section is checked before `raw()` can hand it out,
and every problem ends in one EngineError naming the file and what is wrong. Nothing in the file
is ever executed: it is parsed with `struct` from a read-only view.

Tensors are never copied: `raw(name)` is a uint8 view of a private (copy-on-write) memory mapping
of the file, so the file itself is never written, and the pages of a tensor are read only when
the tensor is used.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.files import is_regular_file, require_regular_file
from engine.gguf.quant_types import GGMLType, block_shape

if TYPE_CHECKING:
    import torch

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 2**16
MAX_DIMS = 4

# Limits far above any real model file (Llama 2: 291 tensors, ~25 keys, a 32000-token vocabulary;
# the largest vocabularies are ~256k tokens), so a small crafted file that claims millions of
# tiny items cannot make the reader build Python objects by the billion.
MAX_KEYS = 2**16
MAX_TENSORS = 2**20
MAX_KEY_BYTES = 2**16 - 1
"""The format's own limit for a key."""
MAX_STRING_BYTES = 2**24
MAX_ARRAY_ITEMS = 2**22
MAX_METADATA_ITEMS = 2**23
"""Array items across all of the metadata."""

# GGUF metadata value types (the format's numbers).
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)
_SCALARS: dict[int, str] = {
    _U8: "B",
    _I8: "b",
    _U16: "H",
    _I16: "h",
    _U32: "I",
    _I32: "i",
    _F32: "f",
    _BOOL: "?",
    _U64: "Q",
    _I64: "q",
    _F64: "d",
}
_SIZES = {code: struct.calcsize("<" + fmt) for code, fmt in _SCALARS.items()}
_TYPE_NAMES = {
    _U8: "uint8",
    _I8: "int8",
    _U16: "uint16",
    _I16: "int16",
    _U32: "uint32",
    _I32: "int32",
    _F32: "float32",
    _BOOL: "bool",
    _STRING: "string",
    _ARRAY: "array",
    _U64: "uint64",
    _I64: "int64",
    _F64: "float64",
}

_HEADER = struct.Struct("<4sIQQ")
_U64_STRUCT = struct.Struct("<Q")
_MIN_KV_BYTES = 8 + 4 + 1
"""The smallest key/value: an empty key's length, the value type and a one-byte value."""
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8
"""The smallest tensor info: an empty name's length, n_dims, one dimension, type and offset."""

Metadata = dict[str, Any]
_Entry = tuple[str, tuple[int, ...], GGMLType, int]
"""A tensor table entry: name, torch shape, type, offset in the data section."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: `shape` in torch order (outermost first), `offset` absolute."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLType
    offset: int
    nbytes: int


def _q(value: object, limit: int = 80) -> str:
    """A name or value from the file, fit for a one-line message: short, controls escaped."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f"'{text}'" if isinstance(value, str) else text


class _Corrupt(Exception):
    """A problem found while parsing; GGUFFile turns it into one EngineError naming the file."""


class _Parser:
    """Reads little-endian fields from a buffer, never past its end.

    `where` describes the part being read ("the metadata (key 3 of 25)") so a truncation names
    it; `_need(n)` is called before every read and every allocation sized by the file.
    """

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.where = "the header"
        self.items = 0

    def left(self) -> int:
        return self.size - self.pos

    def _need(self, n: int, what: str = "") -> None:
        if n > self.left():
            detail = f": {what}, but only {self.left()} bytes are left" if what else ""
            raise _Corrupt(
                f"truncated in {self.where}{detail}; the file is incomplete — download it again"
            )

    def scalar(self, code: int) -> Any:
        fmt = _SCALARS[code]
        self._need(_SIZES[code])
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += _SIZES[code]
        return value

    def u32(self) -> int:
        return self.scalar(_U32)

    def u64(self) -> int:
        return self.scalar(_U64)

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        length = self.u64()
        self._need(length, f"{what} of {length} bytes")
        if length > limit:
            raise _Corrupt(
                f"{what} in {self.where} is {length} bytes long, more than the {limit} Loopchat "
                "reads; the file is corrupt or not a model"
            )
        data = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError as exc:
            raise _Corrupt(
                f"{what} in {self.where} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "the file is corrupt"
            ) from None

    def strings(self, count: int, key: str) -> list[str]:
        """An array of `count` strings (a vocabulary: the one loop that must be tight)."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64_STRUCT.unpack_from
        out = []
        append = out.append
        try:
            for i in range(count):
                if size - pos < 8:
                    self.pos = pos
                    self._need(8, f"string {i} of {_q(key)}")
                (length,) = unpack(buf, pos)
                pos += 8
                if length > size - pos:
                    self.pos = pos
                    self._need(length, f"string {i} of {_q(key)} of {length} bytes")
                if length > MAX_STRING_BYTES:
                    raise _Corrupt(
                        f"string {i} of {_q(key)} is {length} bytes long, more than the "
                        f"{MAX_STRING_BYTES} Loopchat reads; the file is corrupt or not a model"
                    )
                append(str(buf[pos : pos + length], "utf-8"))
                pos += length
        except UnicodeDecodeError as exc:
            raise _Corrupt(
                f"string {len(out)} of {_q(key)} in {self.where} is not valid UTF-8 "
                f"({exc.reason} at byte {exc.start}); the file is corrupt"
            ) from None
        self.pos = pos
        return out

    def scalars(self, code: int, count: int) -> list[Any]:
        """`count` fixed-size values in one unpack: a 32000-entry vocabulary array is one call."""
        self._need(count * _SIZES[code], f"an array of {count} {_TYPE_NAMES[code]} values")
        values = list(struct.unpack_from(f"<{count}{_SCALARS[code]}", self.buf, self.pos))
        self.pos += count * _SIZES[code]
        return values


def _value(p: _Parser, vtype: int, key: str) -> Any:
    """One metadata value of type `vtype` (arrays hold scalars or strings, never arrays)."""
    if vtype in _SCALARS:
        return p.scalar(vtype)
    if vtype == _STRING:
        return p.string(f"the string value of {_q(key)}")
    if vtype == _ARRAY:
        item_type = p.u32()
        count = p.u64()
        if item_type == _ARRAY:
            raise _Corrupt(
                f"metadata key {_q(key)} holds an array of arrays, which Loopchat does not read "
                "(model files do not use them); the file is corrupt or not a model"
            )
        if item_type not in _SCALARS and item_type != _STRING:
            raise _Corrupt(
                f"metadata key {_q(key)} is an array of unknown value type {item_type}; the file "
                "is corrupt or from a newer GGUF version"
            )
        if item_type == _STRING:  # each string is at least its 8-byte length
            p._need(count * 8, f"an array of {count} strings")
        else:
            p._need(
                count * _SIZES[item_type], f"an array of {count} {_TYPE_NAMES[item_type]} values"
            )
        p.items += count
        if count > MAX_ARRAY_ITEMS or p.items > MAX_METADATA_ITEMS:
            raise _Corrupt(
                f"metadata key {_q(key)} holds an array of {count} items; Loopchat reads at most "
                f"{MAX_ARRAY_ITEMS} per array and {MAX_METADATA_ITEMS} in all (the file is "
                "corrupt or not a model)"
            )
        if item_type == _STRING:
            return p.strings(count, key)
        return p.scalars(item_type, count)
    raise _Corrupt(
        f"metadata key {_q(key)} has unknown value type {vtype}; the file is corrupt or from a "
        "newer GGUF version"
    )


def _metadata(p: _Parser, kv_count: int) -> Metadata:
    metadata: Metadata = {}
    for i in range(kv_count):
        p.where = f"the metadata (key {i + 1} of {kv_count})"
        key = p.string("a key", MAX_KEY_BYTES)
        p.where = f"the metadata (key {i + 1} of {kv_count}, {_q(key)})"
        if key in metadata:
            raise _Corrupt(f"metadata key {_q(key)} appears twice; the file is corrupt")
        vtype = p.u32()
        metadata[key] = _value(p, vtype, key)
    return metadata


def _alignment(metadata: Metadata) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value <= 0
        or value > MAX_ALIGNMENT
        or value & (value - 1)
    ):
        raise _Corrupt(
            f"general.alignment is {_q(value)}; it must be a power of two from 1 to "
            f"{MAX_ALIGNMENT} (the file is corrupt)"
        )
    return value


def _tensor_table(p: _Parser, tensor_count: int) -> list[_Entry]:
    """(name, torch shape, type, offset in the data section) of each tensor, checked alone."""
    entries = []
    names: set[str] = set()
    for i in range(tensor_count):
        p.where = f"the tensor table (tensor {i + 1} of {tensor_count})"
        name = p.string("a tensor name")
        p.where = f"the tensor table (tensor {i + 1} of {tensor_count}, {_q(name)})"
        if name in names:
            raise _Corrupt(
                f"tensor {_q(name)} appears twice in the tensor table; the file is corrupt"
            )
        names.add(name)
        n_dims = p.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Corrupt(
                f"tensor {_q(name)} has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS} "
                "(the file is corrupt)"
            )
        p._need(8 * n_dims, f"{n_dims} dimensions")
        ne = p.scalars(_U64, n_dims)  # innermost first
        raw_type = p.u32()
        offset = p.u64()
        if any(d == 0 for d in ne):
            raise _Corrupt(
                f"tensor {_q(name)} has an empty dimension (shape {tuple(reversed(ne))}); "
                "the file is corrupt"
            )
        try:
            qtype = GGMLType(raw_type)
        except ValueError:
            raise _Corrupt(
                f"tensor {_q(name)} has unknown ggml type {raw_type}; the file is corrupt or "
                "needs a newer program"
            ) from None
        weights, _ = block_shape(qtype)
        if ne[0] % weights:
            raise _Corrupt(
                f"tensor {_q(name)} has rows of {ne[0]} weights, not a whole number of "
                f"{qtype.name} blocks of {weights}; the file is corrupt"
            )
        if math.prod(ne) // weights * block_shape(qtype)[1] > p.size:
            raise _Corrupt(
                f"tensor {_q(name)} has shape {tuple(reversed(ne))}, more {qtype.name} data than "
                f"the whole file of {p.size} bytes could hold; the file is corrupt"
            )
        entries.append((name, tuple(reversed(ne)), qtype, offset))
    return entries


def _place(
    entries: list[_Entry],
    data_start: int,
    size: int,
    alignment: int,
) -> dict[str, TensorInfo]:
    """Each tensor's absolute place, checked to be aligned, inside the file and not overlapping."""
    tensors: dict[str, TensorInfo] = {}
    for name, shape, qtype, offset in entries:
        weights, block_bytes = block_shape(qtype)
        nbytes = math.prod(shape) // weights * block_bytes
        if offset % alignment:
            raise _Corrupt(
                f"tensor {_q(name)} starts at data offset {offset}, not a multiple of the file's "
                f"alignment {alignment}; the file is corrupt"
            )
        begin = data_start + offset
        if begin + nbytes > size:
            raise _Corrupt(
                f"tensor {_q(name)} needs bytes {begin} to {begin + nbytes} but the file ends at "
                f"byte {size}; the file is incomplete or corrupt — download it again"
            )
        tensors[name] = TensorInfo(name, shape, qtype, data_start + offset, nbytes)
    end = data_start
    previous = ""
    for info in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
        if info.offset < end:
            raise _Corrupt(
                f"tensor {_q(info.name)} overlaps tensor {_q(previous)} in the data section; "
                "the file is corrupt"
            )
        end = info.offset + info.nbytes
        previous = info.name
    return tensors


def _parse(buf: mmap.mmap | bytes) -> tuple[int, int, Metadata, dict[str, TensorInfo]]:
    """(version, alignment, metadata, tensors) of a whole GGUF file held in `buf`."""
    p = _Parser(buf)
    p._need(_HEADER.size)
    magic, version, tensor_count, kv_count = _HEADER.unpack_from(buf, 0)
    p.pos = _HEADER.size
    if magic != MAGIC:
        raise _Corrupt("is not a GGUF file (bad magic bytes)")
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise _Corrupt(
                "is a GGUF version 1 file, which Loopchat does not read; convert it again with a "
                "current llama.cpp or download a newer file"
            )
        raise _Corrupt(
            f"has GGUF version {version}; Loopchat reads versions 2 and 3 (the file is corrupt "
            "or needs a newer program)"
        )
    for count, what, least in (
        (kv_count, "metadata entries", _MIN_KV_BYTES),
        (tensor_count, "tensors", _MIN_TENSOR_BYTES),
    ):
        if count * least > p.left():
            raise _Corrupt(
                f"claims {count} {what}, more than the {p.left()} bytes after its header could "
                "hold; the file is truncated or corrupt — download it again"
            )
    if kv_count > MAX_KEYS or tensor_count > MAX_TENSORS:
        raise _Corrupt(
            f"claims {kv_count} metadata entries and {tensor_count} tensors; Loopchat reads at "
            f"most {MAX_KEYS} and {MAX_TENSORS} (the file is corrupt or not a model)"
        )
    metadata = _metadata(p, kv_count)
    alignment = _alignment(metadata)
    entries = _tensor_table(p, tensor_count)
    data_start = -(-p.pos // alignment) * alignment
    return version, alignment, metadata, _place(entries, data_start, p.size, alignment)


def is_gguf(path: Path | str) -> bool:
    """True for a regular file whose first four bytes are GGUF's magic."""
    if not is_regular_file(Path(path)):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


class GGUFFile:
    """A GGUF file, parsed and validated on opening; tensors are views of a private mapping.

    Use as a context manager or call `close()`. Views from `raw()` stay valid after `close()`:
    the mapping lives until the last of them is dropped.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        require_regular_file(self.path)
        self._map: mmap.mmap | None = None
        self._bytes: torch.Tensor | None = None
        try:
            with open(self.path, "rb") as f:
                head = f.read(4)
                if not head:
                    raise EngineError(f"{self.path} is empty; download it again")
                if head != MAGIC:
                    raise EngineError(f"{self.path} is not a GGUF file (bad magic bytes)")
                size = f.seek(0, 2)
                if size < _HEADER.size:
                    raise EngineError(
                        f"{self.path}: truncated in the header ({size} bytes); the file is "
                        "incomplete — download it again"
                    )
                # ACCESS_COPY = MAP_PRIVATE: writable in memory (so torch views need no
                # read-only warning), never written back to the file.
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as exc:
            raise EngineError(f"{self.path} cannot be read ({exc.strerror or exc})") from None
        try:
            # slices of an mmap are bytes copies, so parsing leaves no view of the mapping behind
            self.version, self.alignment, self.metadata, self.tensors = _parse(self._map)
        except _Corrupt as exc:
            self.close()
            text = str(exc)
            sep = " " if text.startswith(("is ", "has ", "claims ")) else ": "
            raise EngineError(f"{self.path}{sep}{text}") from None

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's bytes, uint8, [rows, row_bytes] ([1, nbytes] for 1-D), without a copy."""
        info = self.tensors.get(name)
        if info is None:
            raise EngineError(f"{self.path} has no tensor {_q(name)}")
        if self._map is None:
            raise EngineError(f"{self.path} is closed")
        if self._bytes is None:
            # Through a memoryview: the tensors hold it, and while it lives the mapping cannot
            # be closed under them (torch.frombuffer on the mmap itself would not pin it).
            import torch  # only for tensors: reading the metadata (the chooser's search) needs none

            self._bytes = torch.frombuffer(memoryview(self._map), dtype=torch.uint8)
        rows = math.prod(info.shape[:-1])
        flat = self._bytes[info.offset : info.offset + info.nbytes]
        return flat.view(rows, info.nbytes // rows)

    def close(self) -> None:
        """Unmap the file (at once if no `raw()` view is alive, else when the last one goes)."""
        self._bytes = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # views still alive hold the mapping; it goes with them
            self._map = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.tensors)} tensors)"
