"""Model downloads in their own thread, so a download never blocks chatting (or the window)."""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, QThread, Signal, Slot

from desktop.app_text import worded

log = logging.getLogger(__name__)


class DownloadWorker(QObject):
    """Runs engine.hub.download.download_model; reports plain-data progress."""

    progress = Signal(dict)
    finished = Signal(str)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self._cancel = cancel

    @Slot(str, str, bool, str)
    def download(self, repo_id: str, token: str, remember: bool, filename: str = "") -> None:
        """Fetch `repo_id` (a model folder), or only its file `filename` (a GGUF repo: one
        quantization); `finished` carries the folder or the file."""
        from engine.front_door import (
            DownloadCancelled,
            EngineError,
            download_model,
            format_progress,
        )

        def report(p) -> None:
            self.progress.emit(
                {
                    "repo_id": p.repo_id,
                    "filename": p.filename,
                    "done": p.done_bytes,
                    "fraction": p.fraction,
                    "total": p.total_bytes,
                    "speed": p.speed_bps,
                    "eta": p.eta_s,
                    "line": format_progress(p),
                }
            )

        try:
            one_file = {"filename": filename} if filename else {}
            folder = download_model(
                repo_id, token=token or None, progress=report, cancel=self._cancel, **one_file
            )
        except DownloadCancelled:
            self.cancelled.emit()
            return
        except EngineError as exc:
            self.failed.emit(worded(exc))  # the window's advice (Token field), not the CLI's
            return
        except Exception as exc:  # noqa: BLE001 - the window must survive anything
            log.exception("download failed")
            self.failed.emit(f"The download failed unexpectedly: {exc}")
            return
        if token and remember:
            self._remember(token)
        self.finished.emit(str(folder))

    @staticmethod
    def _remember(token: str) -> None:
        """Keep the token in huggingface_hub's own login store (never in Loopchat's settings)."""
        try:
            from huggingface_hub import login

            login(token=token, add_to_git_credential=False)
        except Exception:  # noqa: BLE001 - remembering is a convenience; never log the token
            log.warning("could not save the access token with huggingface_hub's login")


class DownloadController(QObject):
    """Owns the download thread; one download at a time."""

    _requested = Signal(str, str, bool, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cancel = threading.Event()
        self._thread = QThread()
        self._thread.setObjectName("loopchat-download")
        self.worker = DownloadWorker(self._cancel)
        self.worker.moveToThread(self._thread)
        self._requested.connect(self.worker.download)
        self._thread.finished.connect(self.worker.deleteLater)
        self._thread.start()
        self.active = False
        for signal in (self.worker.finished, self.worker.failed):
            signal.connect(self._done)
        # A bound slot, not a lambda: a lambda would run in the download thread.
        self.worker.cancelled.connect(self._cancelled)

    def start(
        self, repo_id: str, token: str = "", remember: bool = False, filename: str = ""
    ) -> None:
        """Download `repo_id`, or only its file `filename` (a GGUF repo)."""
        self._cancel.clear()
        self.active = True
        self._requested.emit(repo_id, token, remember, filename)

    def cancel(self) -> None:
        self._cancel.set()

    def _done(self, _value: str) -> None:
        self.active = False

    def _cancelled(self) -> None:
        self.active = False

    def shutdown(self) -> None:
        self._cancel.set()
        self._thread.quit()
        self._thread.wait(30_000)
