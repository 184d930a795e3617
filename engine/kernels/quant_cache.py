"""The quantized weights' cache file: its key, its safetensors header, its digests, its folder.

Why a module of its own: engine/kernels/quant_load.py quantizes a model through this file (plan,
build, load); what the file is, and when one may be trusted, is decided here. A cache is a
safetensors file whose header carries the key it was built for and a CRC-32 per tensor
(`_header_bytes`, `parse_cache_header`, `_digest`). A header that is not exactly the one a plan
and key would write, a size or digest that does not match, or a path that is not a regular file
(`_open_regular`) makes the cache stale (`StaleCache`): it is built again, never used and never
an error.

The key (`cache_key`) names the checkpoint's files (path, size, mtime_ns, ctime_ns where the OS
keeps one, and a content fingerprint: see `file_fingerprint`), the cache format version, the
quant mode and group size, the activation dtype, the device kind, torch's version and CPU
capability (the int4 packed layout is torch's and may change between versions or instruction
sets). `prune_cache` keeps all models' caches within `cache_limit_bytes`.

No numpy anywhere (it is not a dependency): tensor bytes reach files and zlib as zero-copy
memoryviews of the tensor's own memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from engine.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""3: a CRC-32 per tensor (1 had a word sum, blind to swapped rows; 2 a SHA-256, 2.4x slower to
check at every load) and content-fingerprinted checkpoint files in the key."""
CACHE_LIMIT_BYTES = 24 * 2**30
"""Most bytes the quantized caches of all models may take together (LOOPCHAT_QUANT_CACHE_GB
overrides): one 7B model's int8 and int4 copies are ~11 GB, and a user trying many models should not
find their disk filled by copies of models they dropped long ago. The least recently loaded go
first; the one just loaded always stays."""
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
    """How each checkpoint tensor is stored: kind is "int8", "int4" or "plain".

    Made by engine.kernels.quant_load.make_plan; it fixes the file's layout and header."""

    kinds: dict[str, str]
    stored: dict[str, list[Stored]]
    dtype: torch.dtype
    group_size: int


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
