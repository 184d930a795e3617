"""Settings → Speculative decoding: which draft proposes tokens for the model to check.

Off by default: on the built-in model (tiny: a pass costs little more than the Python around it)
and on a busy CPU a draft can cost more than it saves, and only the user's own machine can say
(benchmarks/speculative.py measures it). The output is the same either way (greedy: token for
token; sampling: the same distribution), so the choice is only about speed and about watching.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QSpinBox, QWidget

from desktop.settings_values import setting_int, setting_str

OFF, LOOKUP, BUILTIN_DRAFT, SELF_INT4 = "", "lookup", "builtin-draft", "self-int4"
CHOICES = (
    (OFF, "Off", "Every token costs one pass of the model"),
    (
        LOOKUP,
        "Prompt lookup",
        "Guess that the text goes on as it did after the last time its latest words appeared "
        "(no second model; helps replies that quote or rewrite)",
    ),
    (
        BUILTIN_DRAFT,
        "Built-in draft model",
        "The built-in model's small sibling, trained on the same dictionary (for the built-in "
        "model only)",
    ),
    (
        SELF_INT4,
        "This model, 4-bit",
        "The open model's own 4-bit copy guesses for its 16-bit self: the same vocabulary, "
        "usually the same guesses, a quarter of the weights to read per guess",
    ),
)
PICK_FOLDER = "\0folder"
DEFAULT_K = 3
"""engine.generation.speculative.DRAFT_K: why 3 is there."""


class DraftSetting(QObject):
    """The draft chooser and tokens per pass, saved in the settings; `changed(spec, k)`.

    Two fields for the settings form's own rows (`rows()`): a nested form would have its own
    label column and push its fields past the edge of a narrow side panel."""

    changed = Signal(str, int)

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        self._parent = parent
        self.combo = QComboBox()
        # As narrow as the panel needs: the longest entry ("Draft model folder…") would
        # otherwise set the column's minimum width.
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(8)
        self.combo.setAccessibleName("Speculative decoding")
        for spec, label, tip in CHOICES:
            self.combo.addItem(label, spec)
            self.combo.setItemData(self.combo.count() - 1, tip, role=3)  # Qt.ToolTipRole
        self.combo.addItem("Draft model folder…", PICK_FOLDER)
        self.combo.setToolTip(
            "A draft guesses the next few tokens and the model checks them all in one pass: "
            "the reply is the same, faster when the guesses are often right"
        )
        self.k = QSpinBox()
        self.k.setRange(1, 16)
        self.k.setAccessibleName("Draft tokens per pass")
        self.k.setToolTip("How many tokens the draft guesses before the model checks them")
        self.k.setMinimumWidth(72)
        self._shown = OFF
        self.set_spec(
            setting_str(settings, "speculative/draft", OFF),
            setting_int(settings, "speculative/k", DEFAULT_K, 1, 16),
            save=False,
        )
        self.combo.activated.connect(self._picked)
        self.k.valueChanged.connect(lambda _v: self._save())

    def rows(self) -> list[tuple[str, QWidget]]:
        """(label, field) for the settings form."""
        return [("Speculative decoding", self.combo), ("Draft tokens", self.k)]

    @property
    def spec(self) -> str:
        """ "" (off), "lookup", "builtin-draft" or a draft model's folder."""
        return self._shown

    def set_spec(self, spec: str, k: int | None = None, save: bool = True) -> None:
        """Show (and with `save`, keep and announce) a draft; a folder gets its own entry."""
        spec = spec or OFF
        at = self.combo.findData(spec)
        if at < 0:  # a folder: one entry for it, before "Draft model folder…"
            for i in range(self.combo.count() - 1, -1, -1):
                if self.combo.itemData(i) not in {c[0] for c in CHOICES} | {PICK_FOLDER}:
                    self.combo.removeItem(i)
            at = self.combo.count() - 1
            self.combo.insertItem(at, f"Draft: {spec}", spec)
            self.combo.setItemData(at, spec, role=3)
        self.combo.setCurrentIndex(at)
        self._shown = spec
        if k is not None:
            blocked = self.k.blockSignals(True)
            self.k.setValue(k)
            self.k.blockSignals(blocked)
        self.k.setEnabled(spec != OFF)
        if save:
            self._save()

    def _picked(self, index: int) -> None:
        spec = self.combo.itemData(index)
        if spec == PICK_FOLDER:
            folder = QFileDialog.getExistingDirectory(
                self.combo.window(), "Choose a draft model folder"
            )
            if not folder:
                self.set_spec(self._shown, save=False)  # cancelled: the choice stays
                return
            spec = folder
        self.set_spec(spec)

    def _save(self) -> None:
        self._settings.setValue("speculative/draft", self._shown)
        self._settings.setValue("speculative/k", self.k.value())
        self.changed.emit(self._shown, self.k.value())
