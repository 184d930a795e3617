"""Opening models: which one is open or loading, the weight format remembered per model, the
recent list, and the 16-bit retry when an 8/4-bit load fails.

The window asks `ModelLoading.load` and shows what it answers (`loaded`, `failed`, `unloaded`);
the load itself runs in the engine thread behind the controller.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal

from desktop.app_text import sentences
from desktop.controller import EngineController
from engine.events import ModelInfo
from engine.front_door import DISPLAY_NAME, is_builtin

log = logging.getLogger(__name__)
MAX_RECENT = 8

WEIGHTS = (
    ("none", "&16-bit (as the model ships)"),
    ("int8", "&8-bit (half the memory)"),
    ("int4", "&4-bit (a third of the memory, less exact)"),
)
"""The weight formats a model folder can be loaded in (engine/kernels/quant.py), remembered per
model."""

GGUF_WEIGHTS = ("file", "none")
"""A GGUF file's formats: its own quantized blocks as they are (the default), or dequantized into
the dtype. Requantizing them to 8/4-bit would only lose precision, so it is not offered."""

WEIGHT_LABELS = {"none": "16-bit", "int8": "8-bit", "int4": "4-bit", "file": "the file's own"}
"""How notices name each format (the menu's words, without the explanation)."""

_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])"
    r"(I?Q\d+_[A-Z0-9]+(?:_[SMLX]{1,2})?|Q\d+_\d|TQ\d_\d|BF16|F16|F32)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
"""llama.cpp's names of its quantizations, as files are named after them."""


def is_gguf_path(path: str) -> bool:
    """Whether `path` names a GGUF file (by its name: what the menus and settings go by)."""
    return path.strip().lower().endswith(".gguf")


def offered_weights(path: str) -> tuple[str, ...]:
    """The weight formats the model at `path` can be loaded in, its default first."""
    return GGUF_WEIGHTS if is_gguf_path(path) else tuple(q for q, _text in WEIGHTS)


def default_weights(path: str) -> str:
    """The format a model opens in until another is chosen: a GGUF file's own blocks, else
    16-bit."""
    return offered_weights(path)[0]


def weight_label(path: str, quant: str) -> str:
    """How notices name `quant` for the model at `path` ("dequantized" for a GGUF file)."""
    if quant == "none" and is_gguf_path(path):
        return "dequantized"
    return WEIGHT_LABELS.get(quant, quant)


def quant_in_name(path: str) -> str:
    """The quantization a GGUF file's name says ("Q4_K_M" in "….Q4_K_M.gguf"), or ""."""
    found = _QUANT_IN_NAME.findall(Path(path).name)
    return found[-1].upper() if found else ""


def weights_setting(path: str) -> str:
    """The settings key holding the weight format remembered for the model at `path`."""
    # QSettings treats "/" as a group separator; keep each model one flat key.
    return "weights/" + re.sub(r"[^A-Za-z0-9._-]", "_", path.strip())


def weights_for(settings: QSettings, path: str) -> str:
    """The weight format remembered for the model at `path` (its default until one has loaded)."""
    value = str(settings.value(weights_setting(path), default_weights(path)))
    return value if value in offered_weights(path) else default_weights(path)


def remember_weights(settings: QSettings, path: str, quant: str) -> None:
    """Keep `quant` as the format the model at `path` opens in next time.

    Called only once a load in that format has succeeded (or to forget one that failed): a choice
    saved before loading would, if it failed, stop the model from opening at every start.
    The default is stored by leaving no key at all.
    """
    if quant in offered_weights(path) and quant != default_weights(path):
        settings.setValue(weights_setting(path), quant)
    else:
        settings.remove(weights_setting(path))


def recent_models(settings: QSettings) -> list[str]:
    value = settings.value("models/recent", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or [])]


def remember_recent(settings: QSettings, path: str) -> None:
    recent = [p for p in recent_models(settings) if p != path]
    settings.setValue("models/recent", [path, *recent][:MAX_RECENT])
    settings.setValue("models/last", path)


def recent_label(path: str) -> tuple[str, str]:
    """(name, tooltip) for a model in *Recent models* and the chooser's "Opened before": the
    built-in model's display name, a folder's own name with its full path as the tooltip, a
    Hub repo id as it is (a list of full paths all starting "/home/…" told nothing apart)."""
    if is_builtin(path):
        return DISPLAY_NAME, "The model that ships with Loopchat (no download)"
    folder = Path(path)
    if folder.is_absolute() or path.startswith(("~", ".")):
        return folder.name or path, path
    return path, f"{path} (from the Hugging Face cache)"


def model_label(path: str) -> str:
    """A model's name for a notice when only its path is known (no ModelInfo yet)."""
    if is_builtin(path):
        return "the built-in model"  # the window capitalises a sentence's first word
    return Path(path).name or path


class ModelLoading(QObject):
    """The open model (`info`), the load under way, and the 8/4-bit → 16-bit fallback."""

    loaded = Signal(object, str)
    """ModelInfo, and a notice to show ("" when there is none): the fallback, a capped context."""
    failed = Signal(str)
    """Why the load failed, as the window shows it (the model still open named)."""
    unloaded = Signal()
    retry = Signal(str, str)
    """(path, its default format): an 8/4-bit (or dequantized GGUF) load failed; the window loads
    it again in 16-bit (or the file's own blocks)."""

    def __init__(self, controller: EngineController, settings: QSettings, parent: QObject) -> None:
        super().__init__(parent)
        self.controller = controller
        self.settings = settings
        self.info: ModelInfo | None = None
        self._pending_path = ""
        self._fallback: tuple[str, str, str] | None = None
        """(path, format, reason): an 8/4-bit load that failed; the 16-bit load of that path now
        under way says so once it has an outcome."""
        self._failed_path = ""
        """The model whose last load failed while no model was open (for Weights' notice)."""
        self._path = ""
        controller.model_loaded.connect(self._on_loaded)  # relayed: `answered_load` is set
        controller.load_failed.connect(self._on_failed)
        controller.worker.model_unloaded.connect(self._on_unloaded)

    def load(self, path: str, quant: str | None = None) -> None:
        """Load `path` in the engine thread (`quant`: by default the one remembered for it)."""
        self._pending_path = path
        quant = quant or weights_for(self.settings, path)
        dtype = str(self.settings.value("engine/dtype", "auto"))
        device = str(self.settings.value("engine/device", "auto"))
        self.controller.load(path, dtype, device, quant)

    def loading(self) -> bool:
        """A model load is under way (Models → Weights waits for it)."""
        return self.controller.loading

    @property
    def in_progress(self) -> bool:
        """A load has not answered yet (the window's buttons wait for it): the controller's."""
        return self.controller.loading

    def loading_path(self) -> str:
        """The model being loaded (as asked for); meaningful while `loading()`."""
        return self._pending_path

    def failed_path(self) -> str:
        """The model whose last load failed while no model was open; "" otherwise."""
        return self._failed_path if self.info is None else ""

    def loaded_quant(self) -> str:
        """The weight format of the open model ("none" when none is open); for a GGUF file
        "file" (its own blocks, whatever engine kernel runs them) or "none" (dequantized)."""
        if self.info is None:
            return "none"
        quant = str(self.info.extra.get("quant", "none"))
        if is_gguf_path(self.current_path()) and quant not in GGUF_WEIGHTS:
            return "file"
        return quant

    def current_path(self) -> str:
        """What the loaded model was opened as (folder, repo id or "builtin"); "" if none."""
        return self._path if self.info is not None else ""

    def refusal(self) -> str:
        """Why Models → Weights cannot reload a model now, in words that say what to do; "" if
        it can (a model is open and no load is under way)."""
        if self.loading():
            name = model_label(self.loading_path())
            return f"Still loading {name}: choose its weights once it is open."
        if self.current_path():
            return ""
        opening = "Models → Recent models or Models → Choose or download a model…"
        failed = self.failed_path()
        if failed:
            return (
                f"No model is open ({model_label(failed)} could not be opened). Open one with "
                f"{opening}, then choose how its weights are stored."
            )
        return f"No model is open. Open one with {opening}, then choose how its weights are stored."

    def _on_loaded(self, info: ModelInfo) -> None:
        self.info = info
        path = self.controller.answered_load[0] or self._pending_path or info.path
        # A Hub snapshot is remembered by repo id: its folder changes with each new revision.
        # A GGUF file is remembered by its path, in the cache too (a repo id would fetch all of
        # its quantizations).
        snapshot = "/snapshots/" in path.replace("\\", "/") and not is_gguf_path(path)
        self._path = info.name if snapshot else path
        remember_recent(self.settings, self._path)
        # Remembered only now that it has loaded: a format that fails is never saved.
        remember_weights(self.settings, self._path, self.loaded_quant())
        self._failed_path = ""
        notices = []
        fallback = self._take_fallback(path)
        if fallback is not None:
            label, reason = fallback
            now = weight_label(path, default_weights(path))
            notices.append(
                f"Could not open {info.name} with {label} weights: {reason}. It is open with "
                f"{now} weights now; Models → Weights tries {label} again."
            )
        note = info.extra.get("context_note")
        if note:  # the context was capped to fit memory: say so once, where it is seen
            notices.append(str(note)[0].upper() + str(note)[1:])
        for line in info.extra.get("load_notes") or ():  # GGUF blocks run as another type
            text = str(line)
            notices.append(f"{text[0].upper()}{text[1:]}.")
        self.loaded.emit(info, " ".join(notices))

    def _on_unloaded(self) -> None:
        self.info = None
        self.unloaded.emit()

    def _on_failed(self, message: str) -> None:
        """Say why the load failed; an 8/4-bit load is retried in 16-bit first.

        Whatever made the quantized load fail (the engine, its cache folder, memory), the model
        itself may well open in 16-bit: the user gets their model and a notice rather than no
        model at every start. The failed format is forgotten, so the next start does not retry it.
        """
        path, quant = self.controller.answered_load
        reason = message.strip().rstrip(".")
        if path and quant != default_weights(path):
            remember_weights(self.settings, path, default_weights(path))  # not retried at start
            # Not when another load was asked for meanwhile (it replaces this one anyway), nor
            # when the window is closing (the load was cancelled).
            if self.controller.running and not self.controller.loading:
                log.warning("%s did not load as %s (%s); trying 16-bit", path, quant, reason)
                self._fallback = (path, quant, reason)
                self.retry.emit(path, default_weights(path))
                return
        fallback = self._take_fallback(path)
        if self.info is None:
            self._failed_path = path
        # Not "hf is still loaded.": after a full stop the window capitalises a sentence's
        # first word, and a model's name must stay as it is.
        kept = f"Still loaded: {self.info.name}." if self.info else ""
        if fallback is not None:
            label, first = fallback
            now = weight_label(path, default_weights(path))
            message = f"With {label} weights: {first}; with {now} weights: {message}"
        # Each part its own sentence: an engine message has no full stop of its own, and the
        # model's name after it read as its continuation ("…not available Built-in: …").
        self.failed.emit(sentences("Could not open the model.", message, kept))

    def _take_fallback(self, path: str) -> tuple[str, str] | None:
        """(format's label, reason) when the load of `path` that just answered was the 16-bit
        retry of a failed 8/4-bit one; the record is used once."""
        fallback, self._fallback = self._fallback, None
        if fallback is None or fallback[0] != path:
            return None
        return weight_label(path, fallback[1]), fallback[2]
