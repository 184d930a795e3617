"""Take the issue-16 screenshots: the real window, offscreen, at 800×600 and 1400×900, light and
dark: first start, a reply with prefill progress, the settings pane, the chooser mid-download.

    QT_QPA_PLATFORM=offscreen python scripts/screenshots_ux.py [--model PATH] [OUT_DIR]

Without --model it builds the tiny random test model (tests/fixtures), whose replies are word
salad; with the built-in model (`--model builtin`) they read better. The download is served by
the tests' fake Hub, held before the weights so the chooser shows a download in progress.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
log = logging.getLogger("screenshots")
SIZES = ((800, 600), (1400, 900))
PROMPT = "Explain attention as a loop over the earlier tokens, with a short example please."


def wait_for(signal, timeout_ms: int = 120_000) -> list:
    """Run the event loop until `signal` fires; its arguments."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop, got = QEventLoop(), []
    signal.connect(lambda *args: (got.extend(args), loop.quit()))
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()
    return got


def settle(ms: int = 150) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def tiny_model(base: Path) -> Path:
    from tests.fixtures.models import random_llama, write_hf
    from tests.fixtures.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(base / "tok")
    return write_hf(random_llama(kv_heads=2, seed=2), base / "tiny", tokenizer, sharded=True)


def new_window(home: Path, size: tuple[int, int]):
    from PySide6.QtCore import QSettings

    from desktop.main_window import MainWindow
    from desktop.views.window_layout import split_sizes

    os.environ["LOOPCHAT_HOME"] = str(home)
    settings = QSettings(str(home / "loopchat.ini"), QSettings.Format.IniFormat)
    settings.setValue("engine/dtype", "float32")
    window = MainWindow(settings)
    window.resize(*size)
    window.splitter.setSizes(split_sizes(size[0]))  # as a fresh window of that size
    window.show()
    settle()
    return window


def shoot(theme: str, size: tuple[int, int], model: Path, out: Path) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.app import apply_look
    from desktop.theme import apply_theme

    app = QApplication.instance()
    apply_look(app)
    apply_theme(app, theme)
    tag = f"{size[0]}x{size[1]}-{theme}"
    home = Path(tempfile.mkdtemp())

    window = new_window(home / "first", size)  # first start: nothing chosen yet
    window.grab().save(str(out / f"ux-first-start-{tag}.png"))
    window.close()

    window = new_window(home / "chat", size)
    window.load_model(str(model))
    wait_for(window.model_ready)
    window.sampling.max_new_tokens.setValue(40)
    window.controller.worker._generator.prefill_chunk = 4  # slow enough to be seen reading
    shown = {"n": 0}

    def grab_prefill(progress) -> None:
        shown["n"] += 1
        if shown["n"] == 3:  # after the labels' relayout (a queued event)
            QTimer.singleShot(0, lambda: window.grab().save(str(out / f"ux-prefill-{tag}.png")))

    window.prefill_shown.connect(grab_prefill)
    window.input.setPlainText(PROMPT)
    window.send(PROMPT)
    wait_for(window.reply_finished)
    settle()
    window.grab().save(str(out / f"ux-reply-{tag}.png"))
    window.side.widget(1).parentWidget().setSizes([size[1] // 4, size[1]])  # settings in view
    settle()
    window.grab().save(str(out / f"ux-settings-{tag}.png"))
    window.close()

    from tests.hub_server import FakeHub

    release = threading.Event()
    with FakeHub() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        os.environ["HF_HOME"] = str(home / "hf")
        os.environ.pop("HF_HUB_OFFLINE", None)
        hub.add("TinyLlama/TinyLlama-1.1B-Chat-v1.0", model)
        hub.hold[".safetensors"] = release
        window = new_window(home / "download", size)
        chooser = window.show_model_chooser()
        chooser.accept_selected()
        for _ in range(200):
            settle(50)
            if chooser.progress.value() > 0:
                break
        settle(300)
        chooser.grab().save(str(out / f"ux-chooser-download-{tag}.png"))
        chooser.close()
        settle()
        window.grab().save(str(out / f"ux-download-status-{tag}.png"))
        release.set()
        window.close()
    log.info("saved %s", tag)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("out", nargs="?", default="docs")
    args = parser.parse_args()
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    app.setApplicationName("Loopchat")
    model = Path(args.model) if args.model else tiny_model(Path(tempfile.mkdtemp()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for theme in ("light", "dark"):
        for size in SIZES:
            shoot(theme, size, model, out)


if __name__ == "__main__":
    main()
