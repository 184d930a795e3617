"""Load a model with int8/int4 weights through an on-disk cache of the quantized tensors.

The first load quantizes the checkpoint tensor by tensor (big ones in row slices), writing each
result straight into a cache file, so memory never holds the 16-bit model, nor even one whole
16-bit matrix as float32. Every load, first or later, then reads the cache. Each tensor is
copied from a private memory mapping of the cache into one anonymous block (transparent huge pages
decode faster than file pages, see engine/loading/checkpoint.py's `_Arena`), its digest checked on
the copy, and the file's pages released. A cache that does not match is built again, never used
and never an error.

The cache file itself (its key, header, digests, size limit) is engine/kernels/quant_cache.py's;
this module decides how each tensor is stored (`make_plan`), quantizes into the file
(`build_cache`) and loads from it (`load_cache`, `load_quantized`).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
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
from engine.kernels.quant_cache import (
    ALIGN,
    Plan,
    StaleCache,
    Stored,
    _as_bytes,
    _byte_view,
    _digest,
    _header_bytes,
    _layout,
    _open_regular,
    cache_key,
    cache_limit_bytes,
    cache_path,
    parse_cache_header,
    prune_cache,
)
from engine.kernels.quant_math import pack_int4, quantize_int4, quantize_int8

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

_LINEAR_WEIGHT = re.compile(r"(^output|\.w[qkvo123])\.weight$")
_EMBEDDING = "tok_embeddings.weight"
_HEAD = "output.weight"
SLICE_BYTES = 32 * 2**20
"""Source bytes quantized at a time: bounds the float32 temporaries of the biggest matrices."""
HASH_THREADS = 8
"""Most threads that check digests while the next tensors are copied (zlib drops the GIL)."""


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
