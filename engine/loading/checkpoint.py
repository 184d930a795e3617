"""Build the Transformer for a model folder and give it its weights, cheaply and strictly.

The checkpoint's files are read by engine/loading/checkpoint_files.py (layout, headers, shards,
tensor sources); this module checks every tensor against the model by name and shape, then
materialises it. The model is built on the meta device and receives its weights by assignment.
Each tensor is read from a private memory mapping of the checkpoint and copied (cast once) into the
model's own memory (or packed for oneDNN, or quantized through engine/kernels/quant_load.py), one
tensor at a time, with the mapped pages released right after: peak memory stays close to the size
of the weights in the chosen dtype, with no whole-model float32 detour.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from engine.errors import EngineError
from engine.kernels.linear import can_pack, pack_weight, use_kernel_linears
from engine.loading.checkpoint_files import (
    _IGNORED,
    TensorSource,
    _hf_name,
    _hf_sources,
    _meta_shards,
    _meta_state,
    detect_layout,
    read_args,
)
from engine.model.config import ModelArgs, read_json
from engine.model.transformer import Transformer

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


def _release_pages(tensor: torch.Tensor) -> None:
    """Tell the kernel we are done with a file-mapped tensor's pages (Linux/macOS).

    Only for tensors backed by an unmodified file mapping: the pages are dropped from this
    process's memory and would simply be read from the file again if touched. Without this, the
    pages read while copying would stay resident next to the copy until the mapping goes away.
    """
    if tensor.device.type != "cpu" or sys.platform not in ("linux", "darwin"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = mmap.PAGESIZE
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        aligned = (start + page - 1) // page * page
        length = (end - aligned) // page * page
        if length > 0:
            libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):  # pragma: no cover - best effort only
        pass


COPY_CHUNK_BYTES = 16 * 2**20
"""Big tensors are copied in row blocks of about this size, releasing each source block after."""


class _Arena:
    """One allocation for every weight, carved into aligned views.

    Fresh anonymous memory gets transparent huge pages, and batch-1 decoding streams every weight
    per token, so weights copied here decode ~20% faster than straight from the file mapping
    (benchmarks/decode.py). One block instead of ~200 also avoids rounding each tensor up to a
    2 MiB huge page, which would add up to hundreds of MB of resident memory.
    """

    ALIGN = 64

    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> None:
        self.dtype = dtype
        sizes = [self._aligned(math.prod(s) * dtype.itemsize) for s in shapes]
        self.buffer = torch.empty(sum(sizes), dtype=torch.uint8)
        self.offset = 0

    @classmethod
    def _aligned(cls, n: int) -> int:
        return (n + cls.ALIGN - 1) // cls.ALIGN * cls.ALIGN

    def rewind(self) -> None:
        """Hand out the same memory again (for a scratch buffer)."""
        self.offset = 0

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        nbytes = math.prod(shape) * self.dtype.itemsize
        view = self.buffer[self.offset : self.offset + nbytes].view(self.dtype).view(shape)
        self.offset += self._aligned(nbytes)
        return view


def _materialise(
    src: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
    arena: _Arena | None,
    release: bool,
) -> torch.Tensor:
    """A private copy of the tensor in the wanted dtype, on the wanted device (cast once).

    With `release`, the source is file-mapped and its pages are dropped block by block as they
    are copied, so even the 130 MB embedding never sits in memory twice.
    """
    if arena is None:
        out = src.to(device=device, dtype=dtype, copy=True)
        if release:
            _release_pages(src)
        return out
    if dtype == torch.float32 and src.dim() == 2:
        # fp32 matrix-vector products run faster on a column-major weight (x @ W^T then reads
        # W^T contiguously); the copy is made anyway, so write it transposed for free.
        out = arena.take((src.shape[1], src.shape[0])).t()
    else:
        out = arena.take(tuple(src.shape))
    _copy_blocks(src, out, release)
    return out


def _copy_blocks(src: torch.Tensor, out: torch.Tensor, release: bool) -> None:
    """out[:] = src (casting), in row blocks; with `release`, each source block's pages go after."""
    if src.dim() == 0:
        out.copy_(src)
        return
    row_bytes = src[0].numel() * src.element_size() if src.dim() > 1 else src.nbytes
    rows = max(1, COPY_CHUNK_BYTES // max(1, row_bytes)) if src.dim() > 1 else len(src)
    for start in range(0, src.shape[0], rows):
        block = src[start : start + rows]
        out[start : start + rows].copy_(block)
        if release and src.is_contiguous():
            _release_pages(block)


_LINEAR_WEIGHT = re.compile(r"(^output|\.w[qkvo123])\.weight$")
"""Weights of `engine.kernels.linear.Linear` layers, packed for oneDNN on CPU when it can."""


def _pack(
    src: torch.Tensor, dtype: torch.dtype, scratch: _Arena | None, release: bool
) -> torch.Tensor:
    """The weight in `dtype`, reordered for oneDNN.

    A weight already in the wanted dtype is packed straight from the file mapping. One that needs
    a cast is copied into `scratch` first, a buffer reused for every weight, so no temporaries
    churn the allocator (freed ones would stay in the heap and raise the resident size).
    """
    if src.dtype == dtype and src.is_contiguous():
        out = pack_weight(src)
        if release:
            _release_pages(src)
        return out
    if scratch is None:
        scratch = _Arena([tuple(src.shape)], dtype)
    scratch.rewind()
    plain = scratch.take(tuple(src.shape))
    _copy_blocks(src, plain, release)
    return pack_weight(plain)


_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


def check_layer_count(args: ModelArgs, sources: dict, folder: Path, origin: Path) -> None:
    """Compare the config's layer count with the layers the weights hold, before building.

    Building the model costs time per layer even on the meta device, so a config claiming ten
    million layers must be refused here, from the tensor names alone.
    """
    present = {int(m.group(1)) for name in sources if (m := _LAYER_INDEX.match(name))}
    held = max(present) + 1 if present else 0
    if args.n_layers > held:
        raise EngineError(
            f"{folder}: the weights lack layers.{held}. (and any after it): {origin.name} says "
            f"{args.n_layers} layers but the checkpoint holds {held}; the checkpoint is "
            "incomplete or not a Llama model"
        )


def load_transformer(
    folder: Path,
    dtype: torch.dtype,
    device: torch.device,
    progress: Progress | None = None,
    quant: str = "none",
    pack: bool = True,
) -> tuple[ModelArgs, Transformer]:
    """Build the model for `folder` with every weight checked by name and shape.

    `quant` "int8"/"int4" quantizes the linear weights through engine.kernels.quant_load's disk
    cache;
    `pack=False` keeps 16-bit CPU weights plain (the measured kernel choice,
    engine/kernels/tuning.py).
    """
    report = progress or (lambda fraction, message: None)
    layout = detect_layout(folder)

    if layout == "hf":
        args = read_args(folder, layout)
        config = read_json(folder / "config.json")
        sources = {}
        release_pages = True  # every safetensors read is a private mapping of the file
        for src in _hf_sources(folder):
            ours = _hf_name(src.name)
            if ours is not None:
                sources[ours] = src
        if "output.weight" not in sources and config.get("tie_word_embeddings"):
            sources["output.weight"] = sources.get("tok_embeddings.weight")  # type: ignore[assignment]
    else:
        state = _meta_state(folder)
        # One shard is one file mapping; merged shards are already private copies.
        release_pages = len(_meta_shards(folder)) == 1
        emb = state.get("tok_embeddings.weight")
        args = read_args(folder, layout, vocab_hint=emb.shape[0] if emb is not None else None)
        sources = {
            name: TensorSource(name, tuple(t.shape), t.dtype, (lambda t=t: t), str(folder))
            for name, t in state.items()
            if not _IGNORED.search(name)
        }

    origin = folder / ("config.json" if layout == "hf" else "params.json")
    model = build_model(
        args, sources, folder, origin, dtype, device, report, quant, pack, release_pages
    )
    return args, model


def check_sources(
    expected: dict[str, torch.Tensor],
    sources: dict[str, TensorSource],
    folder: Path,
    origin: Path,
) -> None:
    """Every tensor the model needs, by our name and with its shape, and nothing else; the
    message names the file a tensor came from and the file that implied its shape."""
    missing = sorted(set(expected) - {k for k, v in sources.items() if v is not None})
    if missing:
        raise EngineError(
            f"{folder}: the weights lack '{missing[0]}'"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f" that {origin.name} implies; the checkpoint is incomplete or not a Llama model"
        )
    unexpected = sorted(set(sources) - set(expected))
    if unexpected:
        raise EngineError(
            f"{sources[unexpected[0]].origin}: unexpected tensor '{sources[unexpected[0]].name}'; "
            "this is not a Llama checkpoint Loopchat understands"
        )
    for name, param in expected.items():
        src = sources[name]
        if tuple(src.shape) != tuple(param.shape):
            raise EngineError(
                f"{src.origin}: tensor '{src.name}' has shape {list(src.shape)} but "
                f"{origin.name} implies {list(param.shape)}"
            )


def build_model(
    args: ModelArgs,
    sources: dict[str, TensorSource],
    folder: Path,
    origin: Path,
    dtype: torch.dtype,
    device: torch.device,
    report: Progress,
    quant: str = "none",
    pack: bool = True,
    release_pages: bool = False,
) -> Transformer:
    """The Transformer for `args`, every weight read from `sources` (our names) and checked.

    `origin` is the file that gave `args` (named in messages). `release_pages`: the sources are
    unmodified file mappings whose pages may be dropped once copied.
    """
    check_layer_count(args, sources, folder, origin)
    with torch.device("meta"):
        model = Transformer(args)
        use_kernel_linears(model)
    expected = dict(model.state_dict())
    check_sources(expected, sources, folder, origin)

    if quant != "none":
        from engine.kernels.quant_load import load_quantized

        model.quant_info = load_quantized(  # type: ignore[assignment]
            model,
            folder,
            {name: tuple(param.shape) for name, param in expected.items()},
            lambda name: sources[name].read(),
            quant,
            dtype,
            device,
            _release_pages if release_pages else (lambda tensor: None),
            report,
        )
        model.requires_grad_(False)
        model.eval()
        return model

    state: dict[str, torch.Tensor] = {}
    total = len(expected)
    arena = scratch = None
    packed = set()
    order = list(expected)
    if device.type == "cpu":
        if pack and can_pack(dtype):
            packed = {name for name in expected if _LINEAR_WEIGHT.search(name)}
            # The output head (vocab x dim) is the largest matrix: pack it first, while little
            # else is resident, so its transient second copy never adds to the final peak.
            order.sort(key=lambda name: name != "output.weight")
            in_layers = [expected[name] for name in packed if name != "output.weight"]
            largest = max(in_layers, key=lambda p: p.numel())
            scratch = _Arena([tuple(largest.shape)], dtype)
        arena = _Arena([tuple(p.shape) for n, p in expected.items() if n not in packed], dtype)
    for i, name in enumerate(order):
        src = sources[name].read()
        if name in packed:
            own_scratch = None if name == "output.weight" else scratch
            state[name] = _pack(src, dtype, own_scratch, release_pages)
        else:
            state[name] = _materialise(src, dtype, device, arena, release_pages)
        if i % 8 == 0 or i == total - 1:
            report((i + 1) / total, f"Loading weights {i + 1}/{total}")
    model.load_state_dict(state, assign=True, strict=True)
    # Norm weights may stay in the checkpoint dtype; buffers and parameters must be on `device`.
    model.requires_grad_(False)
    model.eval()
    return model
