"""How long opening a long conversation holds the GUI, and how long until it is shown.

The tests prove the structure (the read runs in a helper thread, cards are built a few per
event-loop turn: `tests/test_chat_reliability.py`); this measures what that gives on this
machine, where a busy CI runner would make a timed assertion fail. A 10 ms timer on the GUI
thread measures the worst gap between its ticks (how long the window could not repaint).
Prints a markdown table.

    QT_QPA_PLATFORM=offscreen python benchmarks/open_long_conversation.py [--messages 10000 ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def long_export(n: int) -> dict:
    """A conversation of `n` alternating messages, as File → Import takes it."""
    messages = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i}: " + "some **markdown** and `code` " * 3,
            "timings": {} if i % 2 == 0 else {"generated_tokens": 9},
        }
        for i in range(n)
    ]
    return {"format": "loopchat-conversation", "version": 1, "title": "long", "messages": messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[1000, 10_000, 50_000])
    args = parser.parse_args()
    os.environ["LOOPCHAT_HOME"] = tempfile.mkdtemp(prefix="loopchat-bench-")

    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.main_window import MainWindow
    from desktop.views.conversation_view import PAGE

    app = QApplication.instance() or QApplication([])
    settings = QSettings(
        str(Path(os.environ["LOOPCHAT_HOME"]) / "b.ini"), QSettings.Format.IniFormat
    )
    win = MainWindow(settings)
    win.show()
    worst = [0.0, 0.0]  # [worst gap, last tick]

    def tick() -> None:
        now = time.perf_counter()
        if worst[1]:
            worst[0] = max(worst[0], now - worst[1])
        worst[1] = now

    heartbeat = QTimer()
    heartbeat.setInterval(10)
    heartbeat.timeout.connect(tick)

    def run_until(done, limit_s: float = 60.0) -> None:
        deadline = time.perf_counter() + limit_s
        while not done() and time.perf_counter() < deadline:
            app.processEvents()
            time.sleep(0.001)

    print("| messages | open returns (ms) | shown (ms) | worst GUI gap (ms) | scroll-up gap (ms) |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.messages:
        conv = win.store.import_json(long_export(n))
        win.new_chat()
        run_until(lambda: False, 0.2)
        worst[:] = [0.0, 0.0]
        heartbeat.start()
        started = time.perf_counter()
        win.open_conversation(conv)
        returned = time.perf_counter() - started
        run_until(lambda c=conv: win.conversation_id == c)
        shown = time.perf_counter() - started
        first_page = min(PAGE, n)
        run_until(lambda k=first_page: len(win.chat.messages) >= k)
        run_until(lambda: False, 0.3)
        open_gap = worst[0]
        worst[:] = [0.0, 0.0]
        cards = len(win.chat.messages)
        win.chat.verticalScrollBar().setValue(0)
        two_pages = min(2 * cards, n)
        run_until(lambda k=two_pages: len(win.chat.messages) >= k, 10.0)
        heartbeat.stop()
        print(
            f"| {n:,} | {1000 * returned:.0f} | {1000 * shown:.0f} | {1000 * open_gap:.0f} "
            f"| {1000 * worst[0]:.0f} |"
        )
    win.close()


if __name__ == "__main__":
    main()
