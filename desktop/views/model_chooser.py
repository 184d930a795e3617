"""Choose a model: the catalogue, models already on this computer, a folder, or any Hub repo id.

GGUF files other apps keep on this computer (the Hugging Face cache, LM Studio, GPT4All, Jan,
Ollama) are looked for in a helper thread while the dialog is up (desktop.gguf_scan); files that
cannot run are listed greyed, with the reason. A GGUF repo of the catalogue downloads one file: the
quantization picked under the list.

Downloads run in their own thread with progress (bytes, speed, time left) and Cancel. A cancelled
or failed download is never offered as a model: only complete snapshots are listed and opened.
The window owns the downloads (`desktop.background_download`): closing the chooser leaves a
download running, with its progress in the status bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.app_text import for_the_app
from desktop.download import DownloadController
from desktop.gguf_scan import GGUFScan, Where, looked_in
from desktop.model_fit import fit_hint
from desktop.model_loading import is_gguf_path, recent_label
from engine.front_door import format_bytes, is_builtin

OPEN_NOW = "   ·   open now"
"""Ends the label of the model that is loaded (with a check mark in front)."""
SEPARATOR = "   ·   "
GGUF_HEADING = "GGUF files on this computer"
LOOKING = "Looking for GGUF files…"


def opened_before(recent: Sequence[str]) -> list[str]:
    """The folders and GGUF files among the recent models that still exist (not the built-in
    model, not Hub repo ids: those are listed with the catalogue and the downloaded models)."""
    return [
        p
        for p in recent
        if not is_builtin(p)
        and Path(p).is_absolute()
        and (Path(p).is_dir() or (is_gguf_path(p) and Path(p).is_file()))
    ]


class ModelChooser(QDialog):
    """Emits `model_chosen(path)` with a complete local model folder.

    `current`: what the loaded model was opened as (marked "open now"); `recent`: the recent
    models, whose folders are listed under "Opened before"; `gguf_where`: the home folder and
    environment to look for GGUF files in ((None, None): this user's own).
    """

    model_chosen = Signal(str)
    gguf_listed = Signal()
    """The search for GGUF files has answered and its rows are shown (tests, screenshots)."""

    def __init__(
        self,
        parent: QWidget | None = None,
        downloads=None,
        current: str = "",
        recent: Sequence[str] = (),
        gguf_where: Where = (None, None),
        servers=None,
        server_models=None,
    ) -> None:
        super().__init__(parent)
        self.current = current
        self.recent = list(recent)
        self.gguf_files: list | None = None
        """The GGUF files found (engine.gguf.discover.FoundGGUF); None while the search runs."""
        self.gguf_places: list[tuple[str, str]] = []
        self.gguf_error = ""
        self.setWindowTitle("Choose a model")
        self.setMinimumSize(620, 520)
        self._owns_downloads = downloads is None
        self.downloads = downloads if downloads is not None else DownloadController(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(18, 16, 18, 16)
        layout.setSpacing(10)
        intro = QLabel(
            "<h3>Pick a model to chat with</h3>Models run entirely on this computer. They are "
            "downloaded once from the Hugging Face Hub into its standard cache, so models you "
            "already have from other tools are found and not downloaded again."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.items = QListWidget()
        self.items.currentItemChanged.connect(self._selected)
        self.items.itemDoubleClicked.connect(lambda _item: self.accept_selected())
        layout.addWidget(self.items, 1)
        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setOpenExternalLinks(True)
        layout.addWidget(self.details)

        self.quant_row = QWidget()  # a GGUF repo of the catalogue: which file to download
        quant_layout = QHBoxLayout(self.quant_row)
        quant_layout.setContentsMargins(0, 0, 0, 0)
        self.quant_choice = QComboBox()
        self.quant_choice.setToolTip(
            "Smaller files load faster and need less memory; larger ones are more exact."
        )
        self.quant_choice.currentIndexChanged.connect(self._quant_chosen)
        quant_layout.addWidget(QLabel("Quantization"))
        quant_layout.addWidget(self.quant_choice, 1)
        layout.addWidget(self.quant_row)
        self.quant_row.hide()

        self.token_row = QWidget()
        token_layout = QHBoxLayout(self.token_row)
        token_layout.setContentsMargins(0, 0, 0, 0)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("Hugging Face access token (hf_…)")
        self.remember = QCheckBox("Remember (huggingface_hub login)")
        token_layout.addWidget(QLabel("Token"))
        token_layout.addWidget(self.token, 1)
        token_layout.addWidget(self.remember)
        layout.addWidget(self.token_row)
        self.token_row.hide()

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.progress_label = QLabel()
        self.progress_label.hide()
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setObjectName("chooser_error")
        self.error.setStyleSheet("color: #c62828;")
        self.error.hide()
        progress_row = QHBoxLayout()  # Cancel beside the bar: the button row keeps its room
        progress_row.addWidget(self.progress, 1)
        layout.addLayout(progress_row)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.error)

        buttons = QHBoxLayout()
        self.folder_button = QPushButton("Open a folder…")
        self.folder_button.clicked.connect(self._choose_folder)
        self.repo_button = QPushButton("Use a Hub repo id…")
        self.repo_button.clicked.connect(self._choose_repo)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.clicked.connect(self.downloads.cancel)
        self.cancel_button.hide()
        self.go_button = QPushButton("Download and open")
        self.go_button.setObjectName("primary")
        self.go_button.setDefault(True)
        self.go_button.clicked.connect(self.accept_selected)
        self.close_button = QPushButton("Cancel")
        self.close_button.setToolTip("Close without opening a model (a download goes on)")
        self.close_button.clicked.connect(self.reject)
        buttons.addWidget(self.folder_button)
        buttons.addWidget(self.repo_button)
        buttons.addStretch(1)
        progress_row.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)
        buttons.addWidget(self.go_button)
        layout.addLayout(buttons)
        for button in (self.folder_button, self.repo_button, self.cancel_button, self.close_button):
            button.setMinimumWidth(button.sizeHint().width())  # never clip a label
        self.go_button.setMinimumWidth(self.go_button.sizeHint().width())

        worker = self.downloads.worker
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        from desktop.views.server_rows import ServerRows

        # The models of the servers added in Models → Servers…, listed in the background.
        self.server_rows = ServerRows(
            self.items, servers, server_models, self.is_open, self._mark, self
        )
        self.gguf_scan = GGUFScan(gguf_where, self)
        self.gguf_scan.found.connect(self._gguf_found)
        self.gguf_scan.failed.connect(self._gguf_failed)
        self.refresh()
        self.gguf_scan.start()
        if self.downloads.active:  # reopened while a download goes on in the background
            self._show_running(getattr(self.downloads, "repo_id", ""))
            last = getattr(self.downloads, "last", None)
            if last:
                self._on_progress(last)

    # -- listing -----------------------------------------------------------------------------

    def refresh(self) -> None:
        from desktop.catalogue import builtin_entry, load_catalogue
        from engine.front_door import list_cached_models

        self.items.clear()
        cached = {m["repo_id"]: m for m in list_cached_models()}
        builtin = builtin_entry()
        if builtin is not None:  # first: one click away, and it needs no download
            item = QListWidgetItem(
                f"{builtin['name']}   ·   {format_bytes(builtin['size_bytes'])}   ·   included"
            )
            item.setData(Qt.ItemDataRole.UserRole, builtin)
            self.items.addItem(item)
        default_row = 0
        for entry in load_catalogue():
            if entry["layout"] == "gguf":
                item = self._gguf_catalogue_item(entry)
                self.items.addItem(item)
                if entry.get("default"):
                    default_row = self.items.count() - 1
                continue
            have = entry["repo_id"] in cached
            label = f"{entry['name']}   ·   {format_bytes(entry['size_bytes'])}"
            label += "   ·   downloaded" if have else ("   ·   gated" if entry["gated"] else "")
            fit = fit_hint(entry)  # before the download: will it fit this computer's memory?
            if fit is not None:
                label += f"   ·   {fit.verdict}"
            item = QListWidgetItem(label)
            data = dict(entry, kind="catalogue", path=cached.get(entry["repo_id"], {}).get("path"))
            if fit is not None:
                data["fit"] = fit.text
                item.setToolTip(fit.text)
            item.setData(Qt.ItemDataRole.UserRole, data)
            self.items.addItem(item)
            if entry.get("default"):
                default_row = self.items.count() - 1
        catalogue_ids = {
            self.items.item(i).data(Qt.ItemDataRole.UserRole)["repo_id"]
            for i in range(self.items.count())
        }
        for repo_id, model in cached.items():
            if repo_id in catalogue_ids:
                continue
            item = QListWidgetItem(
                f"{repo_id}   ·   {format_bytes(model['size_bytes'])}   ·   downloaded"
            )
            item.setData(
                Qt.ItemDataRole.UserRole,
                {
                    "kind": "cached",
                    "repo_id": repo_id,
                    "name": repo_id,
                    "path": model["path"],
                    "gated": False,
                    "description": "Already in your Hugging Face cache.",
                    "licence": "",
                    "size_bytes": model["size_bytes"],
                },
            )
            self.items.addItem(item)
        self._add_opened_before()
        self.server_rows.add()
        self._add_gguf_files()
        self._mark_open_model()
        self.items.setCurrentRow(default_row)

    def _gguf_catalogue_item(self, entry: dict, filename: str = "") -> QListWidgetItem:
        """A GGUF repo of the catalogue, as the file `filename` (default: the entry's default
        file): its size, whether it is downloaded, whether it fits."""
        item = QListWidgetItem()
        self._describe_gguf_catalogue(item, entry, filename)
        return item

    def _describe_gguf_catalogue(self, item: QListWidgetItem, entry: dict, filename: str) -> None:
        from desktop.catalogue import cached_file, default_file, file_fit_text

        files = {f["filename"]: f for f in entry["files"]}
        chosen = files.get(filename) or default_file(entry)
        path = cached_file(entry["repo_id"], chosen["filename"])
        label = f"{entry['name']}{SEPARATOR}{chosen['quant']}{SEPARATOR}"
        label += format_bytes(chosen["size_bytes"])
        label += f"{SEPARATOR}downloaded" if path else ""
        data = dict(entry, kind="catalogue", path=path, file=chosen["filename"])
        data["size_bytes"] = chosen["size_bytes"]
        fit = file_fit_text(entry, chosen["size_bytes"])
        if fit is not None:
            label += f"{SEPARATOR}{fit[0]}"
            data["fit"] = fit[1]
            item.setToolTip(fit[1])
        item.setText(f"✓ {label}{OPEN_NOW}" if self.is_open(data) else label)
        item.setData(Qt.ItemDataRole.UserRole, data)

    def _add_heading(self, text: str) -> None:
        heading = QListWidgetItem(text)
        heading.setFlags(Qt.ItemFlag.NoItemFlags)  # a heading: not selectable, not a model
        font = QFont(self.items.font())
        font.setBold(True)
        heading.setFont(font)
        heading.setData(Qt.ItemDataRole.UserRole, {"kind": "heading", "repo_id": "", "path": None})
        self.items.addItem(heading)

    @staticmethod
    def _note(text: str, tip: str = "") -> QListWidgetItem:
        """A line that is not a model (greyed, not selectable): the search's state."""
        note = QListWidgetItem(f"   {text}")
        note.setFlags(Qt.ItemFlag.NoItemFlags)
        note.setToolTip(tip)
        note.setData(Qt.ItemDataRole.UserRole, {"kind": "note", "repo_id": "", "path": None})
        return note

    def _add_gguf_files(self) -> None:
        """The heading "GGUF files on this computer", then the search's rows."""
        self._add_heading(GGUF_HEADING)
        for item in self._gguf_rows():
            self.items.addItem(item)

    def _gguf_rows(self) -> list[QListWidgetItem]:
        """The GGUF files found on this computer: name, quantization, size and where from; one
        that cannot run is greyed, with the reason on its second line and in the tooltip. While
        the search runs, or when it found nothing, a note says so (and where it looked)."""
        if self.gguf_error:
            return [self._note(self.gguf_error)]
        if self.gguf_files is None:
            return [self._note(LOOKING)]
        if not self.gguf_files:
            folders = "\n".join(f"{source}: {folder}" for source, folder in self.gguf_places)
            return [self._note(f"None found. Looked in {looked_in(self.gguf_places)}.", folders)]
        listed = {
            str((self.items.item(i).data(Qt.ItemDataRole.UserRole) or {}).get("path"))
            for i in range(self.items.count())
        }
        rows = []
        for found in self.gguf_files:
            path = str(found.path)
            if path in listed:
                continue  # opened before: listed there already
            quant = found.quant or "unknown quantization"
            label = SEPARATOR.join(
                (found.name, quant, format_bytes(found.size_bytes), found.source)
            )
            item = QListWidgetItem(label)
            if found.runnable:
                item.setToolTip(path)
            else:
                reason = found.reason or "Loopchat cannot run this file"
                item.setText(f"{label}\n      Can't run: {reason}")
                item.setToolTip(f"Can't run: {reason}\n{path}")
                item.setFlags(Qt.ItemFlag.NoItemFlags)  # greyed: not a model to choose
            item.setData(
                Qt.ItemDataRole.UserRole,
                {
                    "kind": "gguf" if found.runnable else "gguf-unrunnable",
                    "repo_id": path,
                    "name": found.name,
                    "path": path if found.runnable else None,
                    "gated": False,
                    "description": (
                        f"A GGUF file ({quant}) from {found.source}, opened where it is "
                        f"(Loopchat never changes it): {path}"
                    ),
                    "licence": "",
                    "size_bytes": found.size_bytes,
                    "reason": found.reason,
                },
            )
            if found.runnable and self.is_open(item.data(Qt.ItemDataRole.UserRole)):
                self._mark(item)
            rows.append(item)
        return rows

    def _gguf_found(self, files: list, places: list) -> None:
        self.gguf_files, self.gguf_places, self.gguf_error = files, places, ""
        self._relist_gguf()

    def _gguf_failed(self, message: str) -> None:
        self.gguf_files, self.gguf_places, self.gguf_error = [], [], message
        self._relist_gguf()

    def _relist_gguf(self) -> None:
        """Replace the GGUF section's rows with the search's answer, in place (other sections
        and the row the user has selected stay as they are)."""
        mine = ("note", "gguf", "gguf-unrunnable")
        texts = [self.items.item(i).text() for i in range(self.items.count())]
        if GGUF_HEADING not in texts:
            return
        start = texts.index(GGUF_HEADING) + 1
        selected = self.items.currentItem()
        while start < self.items.count():
            data = self.items.item(start).data(Qt.ItemDataRole.UserRole) or {}
            if data.get("kind") not in mine:
                break
            self.items.takeItem(start)
        for offset, item in enumerate(self._gguf_rows()):
            self.items.insertItem(start + offset, item)
        if selected is not None and self.items.row(selected) >= 0:
            self.items.setCurrentItem(selected)
        self.gguf_listed.emit()

    def _add_opened_before(self) -> None:
        """A heading, then each folder opened before that still exists (its name; the full
        path in the tooltip and the details)."""
        listed = {
            str((self.items.item(i).data(Qt.ItemDataRole.UserRole) or {}).get("path"))
            for i in range(self.items.count())
        }
        folders = [p for p in opened_before(self.recent) if p not in listed]
        if not folders:
            return
        self._add_heading("Opened before")
        for path in folders:
            name, tip = recent_label(path)
            kind = "GGUF file" if is_gguf_path(path) else "folder"
            item = QListWidgetItem(f"{name}{SEPARATOR}{kind}")
            item.setToolTip(tip)
            item.setData(
                Qt.ItemDataRole.UserRole,
                {
                    "kind": "folder",
                    "repo_id": path,
                    "name": name,
                    "path": path,
                    "gated": False,
                    "description": f"A {kind} you opened before: {path}",
                    "licence": "",
                },
            )
            self.items.addItem(item)

    def is_open(self, entry: dict | None) -> bool:
        """Whether `entry` is the model loaded now (by folder, repo id, or the built-in one)."""
        if not entry or not self.current:
            return False
        if entry.get("kind") == "builtin" or is_builtin(str(entry.get("path") or "")):
            return is_builtin(self.current)
        return self.current in (entry.get("path"), entry.get("repo_id"))

    def _mark_open_model(self) -> None:
        for i in range(self.items.count()):
            item = self.items.item(i)
            if self.is_open(item.data(Qt.ItemDataRole.UserRole)):
                self._mark(item)

    def _mark(self, item: QListWidgetItem) -> None:
        if not item.text().startswith("✓ "):
            item.setText(f"✓ {item.text()}{OPEN_NOW}")
        font = QFont(self.items.font())
        font.setBold(True)
        item.setFont(font)

    def entry(self) -> dict | None:
        item = self.items.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def _selected(self, *_args) -> None:
        entry = self.entry()
        if entry is None or entry.get("kind") in ("note", "heading"):
            return
        self.error.hide()
        self._show_quant_choice(entry)
        text = f"<b>{entry['name']}</b> — {entry.get('description', '')}"
        if entry.get("licence"):
            text += f"<br>Licence: {entry['licence']}."
        if entry.get("fit"):
            text += "<br>" + entry["fit"].replace("&", "&amp;").replace("<", "&lt;")
        if entry.get("gated") and not entry.get("path"):
            url = f"https://huggingface.co/{entry['repo_id']}"
            text += (
                f"<br><b>Gated:</b> accept the licence on <a href='{url}'>{url}</a> with your "
                "Hugging Face account, then paste an access token (Settings → Access Tokens)."
            )
        if self.is_open(entry):
            text += "<br><b>Open now.</b> Choosing it again reloads it."
        self.details.setText(text)
        self.token_row.setVisible(bool(entry.get("gated")) and not entry.get("path"))
        self.go_button.setText("Open" if entry.get("path") else "Download and open")

    # -- actions -----------------------------------------------------------------------------

    def _show_quant_choice(self, entry: dict) -> None:
        """The quantizations of a GGUF repo of the catalogue (hidden for every other row)."""
        files = entry.get("files") or []
        gguf = entry.get("kind") == "catalogue" and entry.get("layout") == "gguf" and files
        self.quant_row.setVisible(bool(gguf))
        if not gguf:
            return
        from desktop.catalogue import file_fit_text

        self.quant_choice.blockSignals(True)
        self.quant_choice.clear()
        for f in files:
            text = f"{f['quant']}{SEPARATOR}{format_bytes(f['size_bytes'])}"
            fit = file_fit_text(entry, f["size_bytes"])
            if fit is not None:
                text += f"{SEPARATOR}{fit[0]}"
            if f["filename"] == entry.get("default_file"):
                text += f"{SEPARATOR}recommended"
            self.quant_choice.addItem(text, f["filename"])
            if fit is not None:
                self.quant_choice.setItemData(
                    self.quant_choice.count() - 1, fit[1], Qt.ItemDataRole.ToolTipRole
                )
        self.quant_choice.setCurrentIndex(max(0, self.quant_choice.findData(entry.get("file"))))
        self.quant_choice.blockSignals(False)

    def _quant_chosen(self, index: int) -> None:
        """Another quantization picked: the row shows that file (size, downloaded, fit)."""
        item = self.items.currentItem()
        filename = self.quant_choice.itemData(index)
        if item is None or not filename:
            return
        entry = item.data(Qt.ItemDataRole.UserRole) or {}
        if entry.get("layout") != "gguf" or entry.get("file") == filename:
            return
        self._describe_gguf_catalogue(item, entry, filename)
        self._selected()

    def accept_selected(self) -> None:
        entry = self.entry()
        if entry is None or self.downloads.active or entry.get("kind") in ("note", "heading"):
            return
        if entry.get("path"):
            self._choose(entry["path"])
        else:
            self.start_download(entry["repo_id"], entry.get("file") or "")

    def start_download(self, repo_id: str, filename: str = "") -> None:
        """Download `repo_id` (a model folder), or only its file `filename` (a GGUF repo)."""
        what = f"{filename} from {repo_id}" if filename else repo_id
        self._show_running(what)
        self.progress_label.setText(
            f"Starting the download of {what}… You can close this window: the download "
            "goes on, with its progress in the status bar."
        )
        self.downloads.start(
            repo_id, self.token.text().strip(), self.remember.isChecked(), filename
        )

    def _show_running(self, repo_id: str) -> None:
        self.error.hide()
        self.progress.setValue(0)
        self.progress.setFormat("0%")
        self.progress.show()
        self.progress_label.setText(f"Downloading {repo_id}…")
        self.progress_label.show()
        self.cancel_button.show()
        self.go_button.setEnabled(False)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a model folder (HF or Meta layout)")
        if folder:
            self._choose(folder)

    def _choose_repo(self) -> None:
        repo_id, ok = QInputDialog.getText(
            self,
            "Use a Hub repo id",
            "Repo id (owner/name), e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0:",
        )
        if ok and repo_id.strip():
            self.start_download(repo_id.strip())

    def _choose(self, path: str) -> None:
        self.model_chosen.emit(path)
        self.accept()

    def _on_progress(self, p: dict) -> None:
        fraction = float(p.get("fraction", p["done"] / p["total"] if p["total"] else 0.0))
        self.progress.setValue(int(1000 * fraction))
        self.progress.setFormat(f"{100 * fraction:.0f}%")  # the same number as the line below
        self.progress_label.setText(p["line"])

    def _end_download(self) -> None:
        self.progress.hide()
        self.progress_label.hide()
        self.cancel_button.hide()
        self.go_button.setEnabled(True)

    def _on_finished(self, path: str) -> None:
        if not self.isVisible():
            return  # closed meanwhile: the window opens it (desktop.background_download)
        self._end_download()
        self.refresh()
        self._choose(path)

    def _on_failed(self, message: str) -> None:
        self._end_download()
        self.error.setText(for_the_app(message))
        self.error.show()

    def _on_cancelled(self) -> None:
        self._end_download()
        self.error.setText(
            "Download cancelled; nothing was opened. Files that finished are kept in "
            "the cache, so downloading again skips them."
        )
        self.error.show()
        self.refresh()

    def done(self, result: int) -> None:  # noqa: D401 - Qt API
        """Closing leaves the window's download running; only a chooser's own one stops."""
        if self._owns_downloads:
            self.downloads.shutdown()
        self.gguf_scan.shutdown()
        super().done(result)
