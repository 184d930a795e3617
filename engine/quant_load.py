"""Load a model with int8/int4 weights through an on-disk cache of the quantized tensors.

The first load quantizes the checkpoint tensor by tensor (big ones in row slices), writing each
result straight into a cache file, so memory never holds the 16-bit model, nor even one whole
16-bit matrix as float32. Every load, first or later, then reads the cache: a safetensors file
whose header carries the key it was built for and a checksum per tensor. Each tensor is copied from
a private memory mapping of the cache into one anonymous block (transparent huge pages decode
faster than file pages, see engine/checkpoint.py's `_Arena`), its checksum checked on the copy, and
the file's pages released. A cache whose key, size or checksums do not match is deleted and built
again, never used.

The key names the checkpoint's files (path, size, mtime_ns), the cache format version, the quant
mode and group size, the activation dtype, the device kind, torch's version and CPU capability (the
int4 packed layout is torch's and may change between versions or instruction sets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import EngineError
from engine.paths import cache_dir
from engine.quant import (
    DEFAULT_GROUP_SIZE,
    INT4_PACK_ROWS,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    int4_fits,
    int8_fits,
    pack_int4,
    quantize_int4,
    quantize_int8,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
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

_ST_DTYPES: dict[torch.dtype, str] = {
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class StaleCache(Exception):
    """The cache file is missing, stale, truncated or corrupt: rebuild it."""


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


def cache_key(folder: Path, quant: str, group_size: int, dtype: torch.dtype, device: str) -> dict:
    """Everything a cache file's contents depend on."""
    files = []
    for path in checkpoint_files(folder):
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
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
    """CACHE_LIMIT_BYTES, or LOOPCHAT_QUANT_CACHE_GB (a number of GB) when set."""
    wanted = os.environ.get("LOOPCHAT_QUANT_CACHE_GB", "")
    try:
        return int(float(wanted) * 2**30) if wanted else CACHE_LIMIT_BYTES
    except ValueError:
        log.warning("LOOPCHAT_QUANT_CACHE_GB=%s is not a number; using the default", wanted)
        return CACHE_LIMIT_BYTES


def prune_cache(keep: Path, limit: int) -> list[Path]:
    """Delete the least recently used cache files beside `keep` until all fit in `limit` bytes.

    A load touches its file (mtime), so "oldest" means least recently loaded. `keep` is never
    deleted, even when it alone is over the limit. Returns the deleted files.
    """
    entries = []
    for path in keep.parent.glob("*.safetensors"):
        try:
            st = path.stat()
        except OSError:
            continue
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
        except OSError as exc:
            log.warning("could not remove old quantized cache %s: %s", path, exc)
            continue
        total -= size
        removed.append(path)
        log.info("removed least recently used quantized cache %s (%.2f GB)", path, size / 1e9)
    return removed


def _checksum(raw: torch.Tensor) -> int:
    """Wrapping 64-bit sum of a uint8 tensor's bytes as int64 words (memory-speed, and any single
    flipped bit or zeroed block changes it)."""
    words = raw.numel() // 8
    total = int(raw[: words * 8].view(torch.int64).sum()) if words else 0
    if raw.numel() > words * 8:
        total += int(raw[words * 8 :].to(torch.int64).sum())
    return total & 0xFFFFFFFFFFFFFFFF


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _layout(plan: Plan) -> list[tuple[Stored, int, int]]:
    """(tensor, begin, end) offsets in the data section, each start aligned to 64 bytes."""
    out = []
    offset = 0
    for entries in plan.stored.values():
        for s in entries:
            out.append((s, offset, offset + s.nbytes))
            offset = (offset + s.nbytes + ALIGN - 1) // ALIGN * ALIGN
    return out


def _header_bytes(layout: list[tuple[Stored, int, int]], key: dict, sums: list[int]) -> bytes:
    """The safetensors header (8-byte length + JSON), padded so the data starts 64-aligned.

    Checksums are fixed-width hex, so the header written before the data (with zeros) and the one
    written after (with the real sums) have the same length.
    """
    header: dict[str, Any] = {
        "__metadata__": {
            "format": "pt",
            "loopchat_key": json.dumps(key, sort_keys=True),
            "loopchat_checksums": ",".join(f"{s:016x}" for s in sums),
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
    path: Path,
    plan: Plan,
    read: Callable[[str], torch.Tensor],
    key: dict,
    release: Callable[[torch.Tensor], None],
    report: Progress,
) -> None:
    """Quantize every tensor into a new cache file at `path` (written aside, then renamed)."""
    layout = _layout(plan)
    place = {s.name: (begin, end) for s, begin, end in layout}
    sums = {s.name: 0 for s, _, _ in layout}
    header = _header_bytes(layout, key, [0] * len(layout))
    data_start = len(header)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    total = len(plan.stored)
    try:
        with tmp.open("wb") as f:
            f.write(header)
            f.truncate(data_start + (layout[-1][2] if layout else 0))

            def write(name: str, data: torch.Tensor, at: int = 0) -> None:
                raw = _as_bytes(data)
                f.seek(data_start + place[name][0] + at)
                f.write(raw.numpy())
                sums[name] = (sums[name] + _checksum(raw)) & 0xFFFFFFFFFFFFFFFF

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
            f.write(_header_bytes(layout, key, [sums[s.name] for s, _, _ in layout]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def read_cache_header(path: Path, key: dict) -> tuple[dict, int, list[int]]:
    """Header entries, data start and checksums of a cache file made for `key`, else StaleCache."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise StaleCache("no header")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 64 * 2**20):
                raise StaleCache("bad header length")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise StaleCache("missing") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StaleCache(f"unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise StaleCache("header is not an object")
    meta = header.pop("__metadata__", None) or {}
    if meta.get("loopchat_key") != json.dumps(key, sort_keys=True):
        raise StaleCache("made for other files or settings")
    try:
        sums = [int(s, 16) for s in meta["loopchat_checksums"].split(",") if s]
    except (KeyError, ValueError, AttributeError):
        raise StaleCache("no checksums") from None
    data_start = 8 + length
    end = max((e["data_offsets"][1] for e in header.values()), default=0)
    if data_start + end != size or len(sums) != len(header):
        raise StaleCache(f"size {size}, expected {data_start + end}: truncated or padded")
    return header, data_start, sums


def load_cache(
    path: Path,
    key: dict,
    plan: Plan,
    device: torch.device,
    release: Callable[[torch.Tensor], None],
    report: Progress,
) -> dict[str, torch.Tensor]:
    """Every stored tensor, copied into one aligned block (CPU) or onto `device`, checksummed."""
    header, data_start, sums = read_cache_header(path, key)
    wanted = {s.name: s for entries in plan.stored.values() for s in entries}
    if set(header) != set(wanted):
        raise StaleCache("tensors differ from the plan")
    size = path.stat().st_size
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    mapped = torch.empty(0, dtype=torch.uint8).set_(storage)
    arena = None
    if device.type == "cpu":
        total_bytes = sum((s.nbytes + ALIGN - 1) // ALIGN * ALIGN for s in wanted.values())
        arena = torch.empty(total_bytes, dtype=torch.uint8)
    offset = 0
    state: dict[str, torch.Tensor] = {}
    count = len(header)
    for i, ((name, entry), expected_sum) in enumerate(zip(header.items(), sums, strict=True)):
        s = wanted[name]
        begin, end = entry["data_offsets"]
        if (
            _ST_NAMES.get(entry["dtype"]) != s.dtype
            or tuple(entry["shape"]) != s.shape
            or end - begin != s.nbytes
        ):
            raise StaleCache(f"tensor {name} has another dtype or shape")
        src = mapped[data_start + begin : data_start + end]
        if arena is not None:
            dst = arena[offset : offset + s.nbytes]
            offset += (s.nbytes + ALIGN - 1) // ALIGN * ALIGN
            dst.copy_(src)
        else:
            dst = src.clone()
        release(src)
        if _checksum(dst) != expected_sum:
            raise StaleCache(f"checksum of {name} does not match: corrupt")
        tensor = dst.view(s.dtype).view(s.shape)
        state[name] = tensor if device.type == "cpu" else tensor.to(device)
        if i % 16 == 0 or i == count - 1:
            report((i + 1) / count, f"Loading quantized weights {i + 1}/{count}")
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
    try:
        path = cache_path(folder, quant, group_size, dtype, device.type)
    except OSError as exc:  # an unwritable cache folder: build aside, use once
        log.warning("no cache folder (%s); quantizing into a temporary file", exc)
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="loopchat-quant-")) / "weights.safetensors"
    started = time.perf_counter()
    built = False
    state: dict[str, torch.Tensor] | None = None
    for attempt in range(2):
        try:
            state = load_cache(
                path, key, plan, device, release, lambda f, m: report(0.5 + 0.5 * f, m)
            )
            break
        except StaleCache as why:
            if attempt:
                raise EngineError(
                    f"the quantized weights in {path} cannot be read back ({why})"
                ) from None
            if path.exists():
                log.warning("rebuilding quantized cache %s: %s", path, why)
            else:
                log.info("quantizing %s to %s (cache %s)", folder, quant, path)
            path.unlink(missing_ok=True)
            try:
                build_cache(path, plan, read, key, release, lambda f, m: report(0.5 * f, m))
            except OSError as exc:
                raise EngineError(f"cannot write quantized weights to {path}: {exc}") from None
            built = True
    assert state is not None
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
        "quant_cache": str(path),
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
