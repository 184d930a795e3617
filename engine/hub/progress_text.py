"""A download's progress as plain data, and as the line a dialog or terminal shows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DownloadProgress:
    """One moment of a download, plain data for a progress dialog or a terminal line.

    `done_bytes`/`total_bytes` cover every file the model needs (files already in the cache count as
    done); `speed_bps` is what this download has received per second so far. `done_bytes` only
    steps back when a file whose transfer broke off is fetched again from its start.
    """

    repo_id: str
    filename: str
    done_bytes: int
    total_bytes: int
    speed_bps: float
    eta_s: float | None
    file_done_bytes: int = 0
    file_total_bytes: int = 0
    files_done: int = 0
    files_total: int = 0

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        if self.total_bytes <= 0:
            return 1.0
        return min(1.0, self.done_bytes / self.total_bytes)


def format_bytes(n: float) -> str:
    """Sizes as people read them on a download dialog (decimal units, like the Hub shows)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '1 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_progress(p: DownloadProgress) -> str:
    """One line: bytes, percentage, speed and time left, and the file being fetched."""
    line = f"{format_bytes(p.done_bytes)} / {format_bytes(p.total_bytes)}"
    line += f" ({100 * p.fraction:.0f}%)"
    if p.speed_bps > 0:
        line += f", {format_bytes(p.speed_bps)}/s"
    if p.eta_s is not None and p.done_bytes < p.total_bytes:
        line += f", {format_duration(p.eta_s)} left"
    if p.filename:
        line += f" - {p.filename}"
    return line
