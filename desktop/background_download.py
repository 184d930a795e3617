"""Model downloads that outlive the chooser: progress in the status bar, the model opened when done.

Closing the chooser used to cancel a 600 MB download without a word. The window now owns the one
`DownloadController`; the chooser is only a view of it while open. When a download ends with the
chooser closed, the model is opened at once, unless a reply is streaming: then a notice offers to
open it, so the reply is not cut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject

from desktop.download import DownloadController
from desktop.views.banner import Banner
from desktop.views.window_layout import StatusLine

log = logging.getLogger(__name__)


class BackgroundDownloads(QObject):
    """The window's side of downloads (a GUI-thread QObject: worker signals arrive queued).

    It shows progress in `status`, tells problems with `show_error`, and opens the downloaded
    model with `open_model`, or offers it in `banner` while `replying()` (not to cut a reply).
    `chooser_open()`: the model chooser is on screen (it then opens the model itself).
    """

    def __init__(
        self,
        status: StatusLine,
        banner: Banner,
        open_model: Callable[[str], None],
        show_error: Callable[[str], None],
        replying: Callable[[], bool],
        chooser_open: Callable[[], bool],
        parent: QObject,
    ) -> None:
        super().__init__(parent)
        self.status, self.banner = status, banner
        self.open_model, self.show_error = open_model, show_error
        self.replying, self.chooser_open = replying, chooser_open
        self.controller = DownloadController(self)
        self.repo_id = ""
        self.last: dict | None = None
        """The newest progress report, so a chooser opened mid-download shows it at once."""
        worker = self.controller.worker
        worker.progress.connect(self._progress)
        worker.finished.connect(self._finished)
        worker.failed.connect(self._failed)
        worker.cancelled.connect(self._cancelled)

    @property
    def worker(self):
        """The download worker (its signals: progress, finished, failed, cancelled)."""
        return self.controller.worker

    @property
    def active(self) -> bool:
        return self.controller.active

    def start(
        self, repo_id: str, token: str = "", remember: bool = False, filename: str = ""
    ) -> None:
        """Download `repo_id`, or only its file `filename` (one quantization of a GGUF repo)."""
        self.repo_id, self.last = repo_id, None
        self.status.download(repo_id, None)
        self.controller.start(repo_id, token, remember, filename)

    def cancel(self) -> None:
        self.controller.cancel()

    def shutdown(self) -> None:
        self.controller.shutdown()

    def _progress(self, progress: dict) -> None:
        self.last = progress
        self.status.download(self.repo_id, progress)

    def _finished(self, path: str) -> None:
        self.status.download_ended()
        if self.chooser_open():
            return  # the chooser opens it (and closes)
        name = self.repo_id or path
        if self.replying():
            self.banner.show_message(
                f"{name} is downloaded.", "notice", "Open it", lambda: self.open_model(path)
            )
            return
        log.info("download of %s finished in the background; opening it", name)
        self.open_model(path)

    def _failed(self, message: str) -> None:
        self.status.download_ended()
        if not self.chooser_open():
            self.show_error(
                f"Could not download {self.repo_id}. {message.rstrip('.')}. Open the model chooser "
                "(Models → Choose or download a model…) to try again."
            )

    def _cancelled(self) -> None:
        self.status.download_ended()
