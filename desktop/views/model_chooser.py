"""Choose a model: the catalogue, models already on this computer, a folder, or any Hub repo id.

Downloads run in their own thread with progress (bytes, speed, time left) and Cancel. A cancelled
or failed download is never offered as a model: only complete snapshots are listed and opened.
The window owns the downloads (`desktop.background_download`): closing the chooser leaves a
download running, with its progress in the status bar.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
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
from engine.front_door import format_bytes


class ModelChooser(QDialog):
    """Emits `model_chosen(path)` with a complete local model folder."""

    model_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None, downloads=None) -> None:
        super().__init__(parent)
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
        buttons.addWidget(self.folder_button)
        buttons.addWidget(self.repo_button)
        buttons.addStretch(1)
        progress_row.addWidget(self.cancel_button)
        buttons.addWidget(self.go_button)
        layout.addLayout(buttons)
        for button in (self.folder_button, self.repo_button, self.cancel_button):
            button.setMinimumWidth(button.sizeHint().width())  # never clip a label
        self.go_button.setMinimumWidth(self.go_button.sizeHint().width())

        worker = self.downloads.worker
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        self.refresh()
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
            have = entry["repo_id"] in cached
            label = f"{entry['name']}   ·   {format_bytes(entry['size_bytes'])}"
            label += "   ·   downloaded" if have else ("   ·   gated" if entry["gated"] else "")
            item = QListWidgetItem(label)
            data = dict(entry, kind="catalogue", path=cached.get(entry["repo_id"], {}).get("path"))
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
        self.items.setCurrentRow(default_row)

    def entry(self) -> dict | None:
        item = self.items.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def _selected(self, *_args) -> None:
        entry = self.entry()
        if entry is None:
            return
        self.error.hide()
        text = f"<b>{entry['name']}</b> — {entry.get('description', '')}"
        if entry.get("licence"):
            text += f"<br>Licence: {entry['licence']}."
        if entry.get("gated") and not entry.get("path"):
            url = f"https://huggingface.co/{entry['repo_id']}"
            text += (
                f"<br><b>Gated:</b> accept the licence on <a href='{url}'>{url}</a> with your "
                "Hugging Face account, then paste an access token (Settings → Access Tokens)."
            )
        self.details.setText(text)
        self.token_row.setVisible(bool(entry.get("gated")) and not entry.get("path"))
        self.go_button.setText("Open" if entry.get("path") else "Download and open")

    # -- actions -----------------------------------------------------------------------------

    def accept_selected(self) -> None:
        entry = self.entry()
        if entry is None or self.downloads.active:
            return
        if entry.get("path"):
            self._choose(entry["path"])
        else:
            self.start_download(entry["repo_id"])

    def start_download(self, repo_id: str) -> None:
        self._show_running(repo_id)
        self.progress_label.setText(
            f"Starting the download of {repo_id}… You can close this window: the download "
            "goes on, with its progress in the status bar."
        )
        self.downloads.start(repo_id, self.token.text().strip(), self.remember.isChecked())

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
        super().done(result)
