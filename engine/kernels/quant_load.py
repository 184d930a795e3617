"""Load a model with int8/int4 weights through an on-disk cache of the quantized tensors.

The first load quantizes the checkpoint tensor by tensor (big ones in row slices), writing each
result straight into a cache file, so memory never holds the 16-bit model, nor even one whole
16-bit matrix as float32. Every load, first or later, then reads the cache: a safetensors file
whose header carries the key it was built for and a CRC-32 per tensor. Each tensor is
copied from a private memory mapping of the cache into one anonymous block (transparent huge pages
decode faster than file pages, see engine/loading/checkpoint.py's `_Arena`), its digest checked on
the
copy, and the file's pages released. A cache whose header is not exactly the one this plan and key
would write, whose size or digests do not match, or that is not a regular file, is built again,
never used and never an error.

The key names the checkpoint's files (path, size, mtime_ns, ctime_ns where the OS keeps one, and a
content fingerprint: see `file_fingerprint`), the cache format version, the quant mode and group
size, the activation dtype, the device kind, torch's version and CPU capability (the int4 packed
layout is torch's and may change between versions or instruction sets).

No numpy anywhere (it is not a dependency): tensor bytes reach files and zlib as zero-copy
memoryviews of the tensor's own memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import mmap
import os
import re
import stat
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from engine.errors import EngineError
from engine.kernels.quant import (
    DEFAULT_GROUP_SIZE,
    INT4_PACK_ROWS,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    int4_fits,
    int8_fits,
)
from engine.kernels.quant_math import pack_int4, quantize_int4, quantize_int8
from engine.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""3: a CRC-32 per tensor (1 had a word sum, blind to swapped rows; 2 a SHA-256, 2.4x slower to
check at every load) and content-fingerprinted checkpoint files in the key."""
Progress = Callable[[float, str], None]

_LINEAR_WEIGHT = re.compile(r"(^output|\.w[qkvo123])\.weight$")
_EMBEDDING = "tok_embeddings.weight"
_HEAD = "output.weight"
CACHE_LIMIT_BYTES = 24 * 2**30
"""Most bytes the quantized caches of all models may take together (LOOPCHAT_QUANT_CACHE_GB
overrides): one 7B model's int8 and int4 copies are ~11 GB, and a user trying many models should not
find their disk filled by copies of models they dropped long ago. The least recently loaded go
first; the one just loaded always stays."""
SLICE_BYTES = 32 * 2**20
"""Source bytes quantized at a time: bounds the float32 temporaries of the biggest matrices."""
ALIGN = 64
MAX_HEADER_BYTES = 64 * 2**20
"""No cache header comes near this (a 7B model's is ~40 KB); a longer one is damage."""
FULL_HASH_BYTES = 16 * 2**20
"""Checkpoint files up to this size are hashed whole for the key (~12 ms at 1.4 GB/s)."""
SAMPLE_BLOCKS = 64
SAMPLE_BYTES = 64 * 2**10
"""Bigger files are fingerprinted by their header, their last TAIL_BYTES and SAMPLE_BLOCKS blocks
of SAMPLE_BYTES spread evenly over the data: ~5 MB read per file, a few ms, on every load."""
TAIL_BYTES = 2**20
"""A .pth (zip) file ends with its central directory, which holds every record's CRC-32: hashing
the tail covers every tensor's contents."""
HASH_THREADS = 8
"""Most threads that check digests while the next tensors are copied (zlib drops the GIL)."""
_DIGEST_HEX = re.compile(r"[0-9a-f]{8}")

_ST_DTYPES: dict[torch.dtype, str] = {
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
}


class StaleCache(Exception):
    """The cache file is missing, stale, truncated, corrupt or not a file: rebuild it."""

    def __init__(self, why: str, missing: bool = False) -> None:
        super().__init__(why)
        self.missing = missing


@dataclass(frozen=True)
class Stored:
    """One tensor of the cache file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Plan:
    """How each checkpoint tensor is stored: kind is "int8", "int4" or "plain"."""

    kinds: dict[str, str]
    stored: dict[str, list[Stored]]
    dtype: torch.dtype
    group_size: int


def make_plan(
    shapes: Mapping[str, tuple[int, ...]], quant: str, dtype: torch.dtype, group_size: int
) -> Plan:
    """Decide each tensor's storage: linear layers in `quant`, head and embedding int8, rest plain.

    A linear weight whose shape torch's int4 kernel cannot take falls back to int8 (logged).
    """
    kinds: dict[str, str] = {}
    stored: dict[str, list[Stored]] = {}
    for name, shape in shapes.items():
        prefix = name.removesuffix("weight")
        if name == _EMBEDDING:
            kind = "int8"  # rows dequantized on lookup: no kernel, any shape
        elif not _LINEAR_WEIGHT.search(name):
            kind = "plain"
        elif quant == "int4" and name != _HEAD and int4_fits(shape, group_size):
            kind = "int4"
        elif int8_fits(shape):
            kind = "int8"
        else:
            kind = "plain"
        if _LINEAR_WEIGHT.search(name) and kind != quant and name != _HEAD:
            log.info("%s %s does not fit %s kernels: stored as %s", name, shape, quant, kind)
        kinds[name] = kind
        if kind == "int8":
            stored[name] = [
                Stored(name, torch.int8, shape),
                Stored(prefix + "scales", dtype, shape[:1]),
            ]
        elif kind == "int4":
            out_f, in_f = shape
            stored[name] = [
                Stored(name, torch.uint8, (out_f, in_f // 2)),
                Stored(prefix + "scales_zeros", dtype, (in_f // group_size, out_f, 2)),
            ]
        else:
            stored[name] = [Stored(name, dtype, shape)]
    return Plan(kinds, stored, dtype, group_size)


def swap_modules(model: nn.Module, plan: Plan) -> None:
    """Replace the (meta-device) layers whose weights the plan quantizes by quantized layers."""
    for name, kind in plan.kinds.items():
        if kind == "plain":
            continue
        path = name.removesuffix(".weight")
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        with torch.device("meta"):
            if name == _EMBEDDING:
                new: nn.Module = Int8Embedding(old.num_embeddings, old.embedding_dim, plan.dtype)
            elif kind == "int8":
                new = Int8Linear(old.in_features, old.out_features, plan.dtype)
            else:
                new = Int4Linear(old.in_features, old.out_features, plan.dtype, plan.group_size)
        setattr(parent, attr, new)


# ----------------------------------------------------------------------------------------------
# Cache key and file


def checkpoint_files(folder: Path) -> list[Path]:
    """The files whose change makes a cache stale: weights and configuration."""
    patterns = ("*.safetensors", "*.pth", "config.json", "params.json", "*.index.json")
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file; OSError otherwise.

    Checked before opening (open() on a FIFO waits for a writer, forever) and again on the open
    descriptor (the name may have been replaced in between). O_NONBLOCK makes even that race
    harmless, and changes nothing for a regular file.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path} is not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _safetensors_header_end(f: BinaryIO, size: int) -> int | None:
    """Where a safetensors file's data starts (8 + header length), or None if it has no header."""
    head = f.read(8)
    if len(head) < 8:
        return None
    (length,) = struct.unpack("<Q", head)
    return 8 + length if length <= min(size - 8, 100 * 2**20) else None


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a checkpoint file's contents, whole when small, else of its identifying parts.

    Size and mtime alone miss weights rewritten in place with the time kept (cp -p, rsync -a, tar,
    a checkout), and re-hashing a 13.5 GB checkpoint on every load would cost ~10 s (1.4 GB/s), so
    a big file contributes: its safetensors header (every tensor's name, dtype, shape and offsets;
    the first MiB for other formats), its last MiB (a .pth's zip directory, with every record's
    CRC-32) and 64 blocks of 64 KiB spread evenly over the data, first and last block included.
    A fine-tune or another model changes every tensor, so every block; the key's ctime_ns
    (cache_key) catches any other in-place write on POSIX systems. Unreadable files fingerprint as
    "unreadable": the checkpoint reader then reports them properly.
    """
    h = hashlib.sha256()
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size <= FULL_HASH_BYTES:
                h.update(f.read())
                return h.hexdigest()
            start = _safetensors_header_end(f, size) if path.suffix == ".safetensors" else None
            start = start if start is not None else min(size, 2**20)
            spans = [(0, start), (max(start, size - TAIL_BYTES), TAIL_BYTES)]
            step = max(0, size - start - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
            spans += [(start + int(k * step), SAMPLE_BYTES) for k in range(SAMPLE_BLOCKS)]
            for begin, length in spans:  # (offset, length); a read past the end stops there
                f.seek(begin)
                h.update(f.read(length))
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return h.hexdigest()


def cache_key(folder: Path, quant: str, group_size: int, dtype: torch.dtype, device: str) -> dict:
    """Everything a cache file's contents depend on.

    Each checkpoint file is named by path, size, mtime_ns, ctime_ns (POSIX: the kernel sets it on
    every write and every utime, and nobody can set it back, so a rewrite that restores the mtime
    still shows; on Windows st_ctime is the creation time and is left out) and its
    file_fingerprint. A metadata-only change (chmod) also moves ctime: one needless rebuild, which
    is the safe side.
    """
    files = []
    for path in checkpoint_files(folder):
        try:
            st = os.stat(path)
        except OSError:
            continue
        ctime = st.st_ctime_ns if os.name != "nt" else None
        files.append(
            [str(path.resolve()), st.st_size, st.st_mtime_ns, ctime, file_fingerprint(path)]
        )
    return {
        "format": FORMAT_VERSION,
        "quant": quant,
        "group_size": group_size,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "files": files,
    }


def cache_path(folder: Path, quant: str, group_size: int, dtype: torch.dtype, device: str) -> Path:
    """One file per (model folder, quant, dtype, device): a rebuild replaces it, never piles up."""
    ident = json.dumps(
        [str(folder.resolve()), quant, group_size, str(dtype), device, FORMAT_VERSION]
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:24]
    return cache_dir("weights") / f"{folder.name[:40]}-{quant}-{digest}.safetensors"


def cache_limit_bytes() -> int:
    """CACHE_LIMIT_BYTES, or LOOPCHAT_QUANT_CACHE_GB (a number of GB) when set.

    Only a finite number above 0 counts: `inf` once raised OverflowError on every load, and `0` or
    a negative value deleted every other model's cache. Anything else is logged once per load and
    the default used; a bad setting never deletes anything the default would keep.
    """
    wanted = os.environ.get("LOOPCHAT_QUANT_CACHE_GB", "").strip()
    if not wanted:
        return CACHE_LIMIT_BYTES
    try:
        gb = float(wanted)
    except ValueError:
        gb = math.nan
    if not (math.isfinite(gb) and gb > 0):
        log.warning(
            "LOOPCHAT_QUANT_CACHE_GB=%r is not a number of GB above 0; using the default (%d GB)",
            wanted,
            CACHE_LIMIT_BYTES // 2**30,
        )
        return CACHE_LIMIT_BYTES
    return max(1, int(gb * 2**30))


def prune_cache(keep: Path, limit: int) -> list[Path]:
    """Delete the least recently used cache files beside `keep` until all fit in `limit` bytes.

    A load touches its file (mtime), so "oldest" means least recently loaded. `keep` is never
    deleted, even when it alone is over the limit. Another instance may prune (or load) at the same
    time: a file that vanishes between the listing and its stat is skipped, and one that vanishes
    before its unlink counts as removed (its space is free either way). Only regular files are
    counted or deleted. Returns the files that are gone.
    """
    entries = []
    for path in keep.parent.glob("*.safetensors"):
        try:
            st = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if path == keep:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass  # another instance was first
        except OSError as exc:
            log.warning("could not remove old quantized cache %s: %s", path, exc)
            continue
        total -= size
        removed.append(path)
        log.info("removed least recently used quantized cache %s (%.2f GB)", path, size / 1e9)
    return removed


def _byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy and without numpy.

    The view points into the tensor's memory: the caller keeps the tensor alive while using it.
    """
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("internal: byte views need a contiguous CPU tensor")
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def _digest(t: torch.Tensor) -> str:
    """CRC-32 of a contiguous CPU tensor's bytes, as 8 hex digits.

    Why CRC-32: the digest guards against accidental damage (a bad disk block, bytes moved or
    swapped), which it detects as zip and PNG files do: every error burst up to 32 bits, swapped
    rows, and anything else but 1 in 2^32. It is checked on every load, and zlib's CRC-32 runs at
    3.5 GB/s per core here against SHA-256's 1.46 (blake2b 0.7): a 7 GB int8 7B model loads
    seconds sooner. A cryptographic hash would add no safety: whoever can write the file can
    write its header's digests too. zlib releases the GIL, so threads add up."""
    return f"{zlib.crc32(_byte_view(t)):08x}"


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.cpu().contiguous().reshape(-1).view(torch.uint8)


def _layout(plan: Plan) -> list[tuple[Stored, int, int]]:
    """(tensor, begin, end) offsets in the data section, each start aligned to 64 bytes."""
    out = []
    offset = 0
    for entries in plan.stored.values():
        for s in entries:
            out.append((s, offset, offset + s.nbytes))
            offset = (offset + s.nbytes + ALIGN - 1) // ALIGN * ALIGN
    return out


def _header_bytes(layout: list[tuple[Stored, int, int]], key: dict, digests: list[str]) -> bytes:
    """The safetensors header (8-byte length + JSON), padded so the data starts 64-aligned.

    Digests are fixed-width hex, so the header written before the data (with zeros) and the one
    written after (with the real digests) have the same length. The bytes are a function of
    (plan, key, digests) alone, which is what lets parse_cache_header demand an exact match.
    """
    header: dict[str, Any] = {
        "__metadata__": {
            "format": "pt",
            "loopchat_key": json.dumps(key, sort_keys=True),
            "loopchat_crc32": ",".join(digests),
        }
    }
    for s, begin, end in layout:
        header[s.name] = {
            "dtype": _ST_DTYPES[s.dtype],
            "shape": list(s.shape),
            "data_offsets": [begin, end],
        }
    text = json.dumps(header).encode()
    pad = (-(8 + len(text))) % ALIGN
    text += b" " * pad
    return struct.pack("<Q", len(text)) + text


def build_cache(
    f: BinaryIO,
    plan: Plan,
    read: Callable[[str], torch.Tensor],
    key: dict,
    release: Callable[[torch.Tensor], None],
    report: Progress,
) -> None:
    """Quantize every tensor into the new, empty cache file `f`, hashing each as it is written."""
    layout = _layout(plan)
    place = {s.name: (begin, end) for s, begin, end in layout}
    hashes = {s.name: 0 for s, _, _ in layout}  # running CRC-32s
    done = {s.name: 0 for s, _, _ in layout}
    header = _header_bytes(layout, key, ["0" * 8] * len(layout))
    data_start = len(header)
    total = len(plan.stored)
    f.write(header)
    f.truncate(data_start + (layout[-1][2] if layout else 0))

    def write(name: str, data: torch.Tensor, at: int = 0) -> None:
        if at != done[name]:  # the digest is of the bytes in order
            raise ValueError(f"internal: {name} written out of order")
        raw = _as_bytes(data)
        view = _byte_view(raw)
        f.seek(data_start + place[name][0] + at)
        f.write(view)
        hashes[name] = zlib.crc32(view, hashes[name])
        done[name] += len(view)

    for i, (name, entries) in enumerate(plan.stored.items()):
        src = read(name)
        kind = plan.kinds[name]
        if kind == "plain":
            write(name, src.to(plan.dtype))
        else:
            _quantize_into(src, kind, plan, entries, write, release)
        if src.device.type == "cpu":
            release(src)
        report((i + 1) / total, f"Quantizing weights {i + 1}/{total}")
    f.seek(0)
    f.write(_header_bytes(layout, key, [f"{hashes[s.name]:08x}" for s, _, _ in layout]))
    f.flush()
    os.fsync(f.fileno())


def _quantize_into(
    src: torch.Tensor,
    kind: str,
    plan: Plan,
    entries: list[Stored],
    write: Callable[..., None],
    release: Callable[[torch.Tensor], None],
) -> None:
    """Quantize `src` in row slices; write the integer part as it comes, the scales at the end."""
    out_f, in_f = src.shape
    weight_entry, scale_entry = entries
    rows = max(INT4_PACK_ROWS, SLICE_BYTES // max(1, in_f * src.element_size()))
    rows = rows // INT4_PACK_ROWS * INT4_PACK_ROWS  # int4 packs rows in blocks of 64
    scales = torch.empty(scale_entry.shape, dtype=plan.dtype)
    row_bytes = weight_entry.nbytes // out_f
    for start in range(0, out_f, rows):
        block = src[start : start + rows]
        if kind == "int8":
            q, scale = quantize_int8(block)
            scales[start : start + rows] = scale.to(plan.dtype)
            write(weight_entry.name, q, start * row_bytes)
        else:
            q, sz = quantize_int4(block, plan.group_size)
            scales[:, start : start + rows] = sz.to(plan.dtype)
            write(weight_entry.name, pack_int4(q, torch.device("cpu")), start * row_bytes)
        if block.is_contiguous() and block.device.type == "cpu":
            release(block)
    write(scale_entry.name, scales)


def parse_cache_header(f: BinaryIO, size: int, key: dict, plan: Plan) -> tuple[int, list[str]]:
    """Data start and per-tensor digests of a cache file of `size` bytes made for `key` and `plan`.

    The header is accepted only when it is, byte for byte, the one build_cache writes for this plan
    and key with the digests it carries; so whatever a damaged byte did (a renamed key, another
    type, an offset out of range, an unknown dtype, broken JSON), the answer is StaleCache, never
    KeyError or TypeError. A damaged digest passes here and fails on its tensor.
    """
    head = f.read(8)
    if len(head) < 8:
        raise StaleCache("no header")
    (length,) = struct.unpack("<Q", head)
    if length > min(size - 8, MAX_HEADER_BYTES):
        raise StaleCache("bad header length")
    text = f.read(length)
    if len(text) != length:
        raise StaleCache("truncated header")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise StaleCache(f"unreadable header ({type(exc).__name__})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise StaleCache("no metadata in the header")
    if meta.get("loopchat_key") != json.dumps(key, sort_keys=True):
        raise StaleCache("made for other files or settings")
    layout = _layout(plan)
    digests = meta.get("loopchat_crc32")
    digests = digests.split(",") if isinstance(digests, str) else []
    if len(digests) != len(layout) or not all(_DIGEST_HEX.fullmatch(d) for d in digests):
        raise StaleCache("no valid digests")
    if _header_bytes(layout, key, digests) != head + text:
        raise StaleCache("header differs from the one this plan writes")
    data_end = 8 + length + (layout[-1][2] if layout else 0)
    if data_end != size:
        raise StaleCache(f"size {size}, expected {data_end}: truncated or padded")
    return 8 + length, digests


def load_cache(
    path: Path,
    key: dict,
    plan: Plan,
    device: torch.device,
    release: Callable[[torch.Tensor], None],
    report: Progress,
) -> dict[str, torch.Tensor]:
    """Every stored tensor, copied into one aligned block (CPU) or onto `device`, digest-checked.

    The file is opened once and everything is read through that descriptor and its private
    mapping: another instance's prune may unlink the name meanwhile, and this load still reads
    the file it checked. Missing, not a regular file, unreadable or not matching: StaleCache.
    Digests are checked by a few threads while the next tensors are copied.
    """
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            data_start, digests = parse_cache_header(f, size, key, plan)
            view = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise StaleCache("missing", missing=True) from None
    except (OSError, ValueError) as exc:
        raise StaleCache(f"cannot be read ({exc})") from None
    # The tensor keeps the mapping alive (it holds `view`); it is unmapped when the last slice goes.
    mapped = torch.frombuffer(view, dtype=torch.uint8)
    del view
    layout = _layout(plan)
    arena = None
    if device.type == "cpu":
        arena = torch.empty(
            sum((s.nbytes + ALIGN - 1) // ALIGN * ALIGN for s, _, _ in layout), dtype=torch.uint8
        )
    offset = 0
    state: dict[str, torch.Tensor] = {}
    checks: list[tuple[str, str, Future[str]]] = []
    count = len(layout)
    pool = ThreadPoolExecutor(min(HASH_THREADS, os.cpu_count() or 1), "quant-digest")
    try:
        for i, ((s, begin, end), digest) in enumerate(zip(layout, digests, strict=True)):
            src = mapped[data_start + begin : data_start + end]
            if arena is not None:
                dst = arena[offset : offset + s.nbytes]
                offset += (s.nbytes + ALIGN - 1) // ALIGN * ALIGN
                dst.copy_(src)
                checks.append((s.name, digest, pool.submit(_digest, dst)))
            else:
                dst = src.clone()
                if _digest(dst) != digest:
                    raise StaleCache(f"digest of {s.name} does not match: corrupt")
            release(src)
            tensor = dst.view(s.dtype).view(s.shape)
            state[s.name] = tensor if device.type == "cpu" else tensor.to(device)
            if i % 16 == 0 or i == count - 1:
                report((i + 1) / count, f"Loading quantized weights {i + 1}/{count}")
        for name, digest, check in checks:
            if check.result() != digest:
                raise StaleCache(f"digest of {name} does not match: corrupt")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return state


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put a tensor in place of a meta buffer/parameter (shapes may differ on CUDA's int4)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        raise EngineError(f"internal: the model has no tensor '{name}' to load")


def _discard(path: Path) -> None:
    """Remove a stale cache file before its rebuild (frees its space first); leave a folder be."""
    try:
        if not path.is_dir():
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove stale quantized cache %s: %s", path, exc)


def _build_and_load(
    path: Path | None,
    plan: Plan,
    read: Callable[[str], torch.Tensor],
    key: dict,
    device: torch.device,
    release: Callable[[torch.Tensor], None],
    report: Progress,
) -> tuple[dict[str, torch.Tensor], Path | None]:
    """Quantize into a new file beside `path`, load it, then rename it into place.

    The new file is loaded before it gets the cache's name, so no prune can take it away between
    building and loading. Where it cannot be kept (no cache folder, or something that is not a
    file at `path`, such as a folder, which is never deleted) it is used once and removed.
    Returns the state and where the cache now is (None when not kept).
    """
    try:
        if path is None:
            raise OSError("no cache folder")
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        log.warning("cannot write the quantized cache (%s); quantizing into a temporary file", exc)
        path = None
        try:
            fd, name = tempfile.mkstemp(prefix="loopchat-quant-", suffix=".tmp")
        except OSError as exc2:
            raise EngineError(f"cannot write quantized weights anywhere: {exc2}") from None
    tmp = Path(name)
    kept = False
    try:
        try:
            with os.fdopen(fd, "w+b") as f:
                build_cache(f, plan, read, key, release, lambda x, m: report(0.5 * x, m))
        except OSError as exc:
            raise EngineError(f"cannot write quantized weights to {tmp}: {exc}") from None
        try:
            state = load_cache(
                tmp, key, plan, device, release, lambda x, m: report(0.5 + 0.5 * x, m)
            )
        except StaleCache as why:
            raise EngineError(
                f"the quantized weights in {tmp} cannot be read back ({why})"
            ) from None
        if path is not None:
            try:
                os.replace(tmp, path)
                kept = True
            except OSError as exc:
                log.warning(
                    "cannot keep the quantized weights at %s (%s); they are used this once",
                    path,
                    exc,
                )
                path = None
    finally:
        if not kept:
            tmp.unlink(missing_ok=True)
    return state, path


def load_quantized(
    model: nn.Module,
    folder: Path,
    shapes: Mapping[str, tuple[int, ...]],
    read: Callable[[str], torch.Tensor],
    quant: str,
    dtype: torch.dtype,
    device: torch.device,
    release: Callable[[torch.Tensor], None],
    progress: Progress | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> dict[str, Any]:
    """Quantize `model` (on the meta device) in place from its checkpoint, through the cache.

    Returns facts for describe(): quant mode, group size, cache file, whether it was a hit.
    """
    report = progress or (lambda fraction, message: None)
    plan = make_plan(shapes, quant, dtype, group_size)
    swap_modules(model, plan)
    key = cache_key(folder, quant, group_size, dtype, device.type)
    path: Path | None
    try:
        path = cache_path(folder, quant, group_size, dtype, device.type)
    except OSError as exc:  # an unwritable cache folder: build aside, use once
        log.warning("no cache folder (%s); quantizing into a temporary file", exc)
        path = None
    started = time.perf_counter()
    state: dict[str, torch.Tensor] | None = None
    if path is not None:
        try:
            state = load_cache(
                path, key, plan, device, release, lambda f, m: report(0.5 + 0.5 * f, m)
            )
        except StaleCache as why:
            if why.missing:
                log.info("quantizing %s to %s (cache %s)", folder, quant, path)
            else:
                log.warning("rebuilding quantized cache %s: %s", path, why)
                _discard(path)
    built = state is None
    if state is None:
        state, path = _build_and_load(path, plan, read, key, device, release, report)
    if path is not None:
        try:
            os.utime(path)  # marks it recently used for prune_cache
            prune_cache(path, cache_limit_bytes())
        except OSError as exc:
            log.warning("could not tidy the quantized cache folder: %s", exc)
    for name, tensor in state.items():
        _assign(model, name, tensor)
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        _repack_for_cuda(model, plan, device)
    seconds = time.perf_counter() - started
    log.info(
        "%s weights %s from %s in %.2f s", quant, "built" if built else "loaded", path, seconds
    )
    return {
        "quant": quant,
        "group_size": group_size if quant == "int4" else None,
        "quant_cache": str(path) if path is not None else None,
        "quant_cache_hit": not built,
        "quant_load_s": round(seconds, 3),
    }


def _repack_for_cuda(
    model: nn.Module, plan: Plan, device: torch.device
) -> None:  # pragma: no cover
    """CUDA's int4 kernel wants its own layout: unpack the CPU one's values and repack on the GPU.

    Written to the documented contracts but never run here (no GPU on the development machine).
    """
    for name, kind in plan.kinds.items():
        if kind != "int4":
            continue
        layer = model.get_submodule(name.removesuffix(".weight"))
        cpu_packed = layer.weight.cpu()
        # Recover q with the CPU kernel itself: with scale 1 and zero 8 per group the weight it
        # multiplies by is (q - 8) * 1 + 8 = q, so the identity's product is qᵀ.
        eye = torch.eye(layer.in_features, dtype=torch.float32)
        unit = torch.zeros(layer.in_features // layer.group_size, layer.out_features, 2)
        unit[..., 0] = 1.0
        unit[..., 1] = 8.0
        q = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, cpu_packed, layer.group_size, unit)
        q = q.t().round().to(torch.int32)  # [out, in] in 0..15
        layer.weight = pack_int4(q, device)
