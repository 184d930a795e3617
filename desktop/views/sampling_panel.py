"""Sampling settings, persisted between runs, and the system prompt's box.

Defaults come from `engine.events.SamplingParams` (the CLI reads the same record). The system
prompt is not a generation setting: `prompt_box` (desktop.views.system_prompt_box) shows the
open conversation's prompt, with the default for new chats (`chat/system_prompt`, changed only
when the user says so) and named presets beside it; the side panel gives it its own section.
`system_prompt` is its editor (a test seam).
"""

from __future__ import annotations

from PySide6.QtCore import QSettings, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from desktop.prompt_presets import DEFAULT_SYSTEM_PROMPT_KEY
from desktop.settings_values import setting_float, setting_int
from desktop.turns import ReplyOptions
from desktop.views.draft_setting import DraftSetting
from desktop.views.system_prompt_box import SystemPromptBox
from desktop.views.wheel_guard import guard_wheel
from engine.events import DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPORT_TOP, SamplingParams

_P = SamplingParams()
DEFAULTS = {
    "temperature": _P.temperature,
    "top_k": _P.top_k,
    "top_p": _P.top_p,
    "min_p": _P.min_p,
    "repetition_penalty": _P.repetition_penalty,
    "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    "seed": -1 if _P.seed is None else _P.seed,
    "report_top": DEFAULT_REPORT_TOP,
}
"""The panel's field values when nothing is saved: SamplingParams' own defaults."""
__all__ = ["DEFAULT_SYSTEM_PROMPT_KEY", "DEFAULTS", "SamplingPanel", "parse_seed"]
SEED_MAX = 2**63 - 1
"""The largest seed the panel takes: QSettings keeps a signed 64-bit int (2**64 raised
OverflowError on save), and -1 is kept for "random"."""


def parse_seed(text: str) -> int | None:
    """The seed typed, or None (random) unless it is ASCII digits from 0 to SEED_MAX.

    Strict, because int() takes "²" as 2 after str.isdigit() said yes to it.
    """
    text = text.strip()
    if not (0 < len(text) <= len(str(SEED_MAX)) and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= SEED_MAX else None


class SeedValidator(QValidator):
    """Refuses a keystroke or paste that would make the seed anything but 0..SEED_MAX."""

    def validate(self, text: str, pos: int) -> tuple[QValidator.State, str, int]:
        ok = not text.strip() or parse_seed(text) is not None
        return (QValidator.State.Acceptable if ok else QValidator.State.Invalid), text, pos


class SamplingPanel(QWidget):
    """Temperature, filters, penalty, length, seed, panel k; the system prompt's box beside."""

    changed = Signal()

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        form = QFormLayout(self)
        form.setContentsMargins(12, 8, 12, 8)
        form.setVerticalSpacing(6)
        # In a narrow side panel a label goes above its field instead of squeezing it.
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)

        self.prompt_box = SystemPromptBox(settings)
        """Laid out by the side panel, in a section of its own above these fields."""
        self.system_prompt = self.prompt_box.editor

        def spin(lo: float, hi: float, step: float, decimals: int) -> QDoubleSpinBox:
            box = QDoubleSpinBox()
            box.setRange(lo, hi)
            box.setSingleStep(step)
            box.setDecimals(decimals)
            return box

        self.temperature = spin(0.0, 2.0, 0.05, 2)
        self.temperature.setToolTip("0 = always the most likely token (greedy)")
        form.addRow("Temperature", self.temperature)
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 1000)
        self.top_k.setToolTip("Sample among the k most likely tokens (0 = off)")
        form.addRow("Top-k", self.top_k)
        self.top_p = spin(0.01, 1.0, 0.01, 2)
        self.top_p.setToolTip("Sample among the most likely tokens that reach this mass (1 = off)")
        form.addRow("Top-p", self.top_p)
        self.min_p = spin(0.0, 0.99, 0.01, 2)
        self.min_p.setToolTip("Drop tokens below this fraction of the top token (0 = off)")
        form.addRow("Min-p", self.min_p)
        self.repetition_penalty = spin(0.5, 2.0, 0.05, 2)
        self.repetition_penalty.setToolTip("Discourage repeating tokens (1 = off)")
        form.addRow("Repetition penalty", self.repetition_penalty)
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setRange(1, 32768)
        form.addRow("Max new tokens", self.max_new_tokens)
        self.seed = QLineEdit()
        self.seed.setPlaceholderText("random")
        self.seed.setToolTip("A whole number (0 or more) makes sampling repeatable; empty = random")
        self.seed.setValidator(SeedValidator(self.seed))
        form.addRow("Seed", self.seed)
        self.report_top = QSpinBox()
        self.report_top.setRange(1, 50)
        self.report_top.setToolTip("How many candidates the top-k panel shows")
        form.addRow("Top-k panel rows", self.report_top)
        self.draft = DraftSetting(settings, self)
        """Speculative decoding: the draft and its tokens per pass (the window relays them)."""
        for label, field in self.draft.rows():
            form.addRow(label, field)
        for box in self.findChildren(QAbstractSpinBox):
            # Room for five digits and the arrows: a wider minimum (32768's width in Max new
            # tokens) wrapped that row alone under its label in a narrow panel.
            box.setMinimumWidth(72)
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setObjectName("meta")
        self.warning.hide()
        form.addRow(self.warning)
        self._wheel_guard = guard_wheel(self)
        self.load()
        for box in (self.temperature, self.top_p, self.min_p, self.repetition_penalty):
            box.valueChanged.connect(self._save)
        for box in (self.top_k, self.max_new_tokens, self.report_top):
            box.valueChanged.connect(self._save)
        self.seed.editingFinished.connect(self._save)

    def load(self) -> None:
        """The saved values; a damaged one (a hand-edited file) gives its field's default."""
        s = self._settings
        for key in ("temperature", "top_p", "min_p", "repetition_penalty"):
            box = getattr(self, key)
            box.setValue(
                setting_float(s, f"sampling/{key}", DEFAULTS[key], box.minimum(), box.maximum())
            )
        for key in ("top_k", "max_new_tokens", "report_top"):
            box = getattr(self, key)
            box.setValue(
                setting_int(s, f"sampling/{key}", DEFAULTS[key], box.minimum(), box.maximum())
            )
        seed = setting_int(s, "sampling/seed", DEFAULTS["seed"], -1, SEED_MAX)
        self.seed.setText("" if seed < 0 else str(seed))
        self.system_prompt.setPlainText(self.default_system_prompt())

    def default_system_prompt(self) -> str:
        """The system prompt a new chat starts with."""
        return self.prompt_box.default_prompt()

    def save_default_system_prompt(self) -> None:
        """Make the prompt shown now the one new chats start with."""
        self.prompt_box.make_default()

    def show_system_prompt(self, text: str) -> None:
        """Show a conversation's prompt without it counting as an edit."""
        blocked = self.system_prompt.blockSignals(True)
        self.system_prompt.setPlainText(text)
        self.system_prompt.blockSignals(blocked)
        self.prompt_box.refresh_presets()

    def _save(self) -> None:
        s = self._settings
        values = self.values()
        for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            s.setValue(f"sampling/{key}", values["params"][key])
        s.setValue("sampling/max_new_tokens", values["max_new_tokens"])
        s.setValue("sampling/report_top", values["report_top"])
        seed = values["params"]["seed"]
        s.setValue("sampling/seed", -1 if seed is None else seed)
        self.changed.emit()

    def values(self) -> dict:
        """The request fields these settings decide (plain data for the worker)."""
        seed = parse_seed(self.seed.text())
        return {
            "params": {
                "temperature": round(self.temperature.value(), 4),
                "top_k": self.top_k.value(),
                "top_p": round(self.top_p.value(), 4),
                "min_p": round(self.min_p.value(), 4),
                "repetition_penalty": round(self.repetition_penalty.value(), 4),
                "seed": seed,
            },
            "max_new_tokens": self.max_new_tokens.value(),
            "report_top": self.report_top.value(),
        }

    def options(self) -> ReplyOptions:
        """The reply settings as the session passes them to the engine."""
        values = self.values()
        return ReplyOptions(
            SamplingParams(**values["params"]), values["max_new_tokens"], values["report_top"]
        )
