"""`loopchat`: start the window at once, then load a model in the engine thread.

`loopchat --self-test MODEL` runs the same worker thread headless: it loads MODEL, generates 16
greedy tokens from "Hello" and prints the CLI's `done` JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence

from engine.events import DTYPE_NAMES, GREEDY, QUANT_NAMES, GenerationRequest, done_line

SELF_TEST_PROMPT = "Hello"
SELF_TEST_TOKENS = 16


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loopchat", description="Private local chat with Llama 2")
    parser.add_argument(
        "--model", help="model folder (HF or Meta layout), .gguf file or cached Hub repo id"
    )
    parser.add_argument("--dtype", choices=DTYPE_NAMES)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--self-test", metavar="MODEL", help="load MODEL headless, generate, exit")
    parser.add_argument(
        "--quant",
        choices=QUANT_NAMES,
        default=None,
        help="with --self-test: the weights' format (none: 16-bit; int8, int4: quantized on load; "
        "file: a .gguf file's own blocks, its default)",
    )
    return parser.parse_args(argv)


def setup_logging() -> None:
    from desktop.paths import log_dir

    handler = logging.handlers.RotatingFileHandler(
        log_dir() / "loopchat.log", maxBytes=2_000_000, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def log_unhandled_exceptions() -> None:
    """Exceptions raised in Qt event handlers reach sys.excepthook, not a caller: log them to
    loopchat.log as well as stderr, so a user's report has the traceback."""
    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        logging.getLogger("loopchat").error("unhandled exception", exc_info=(kind, value, tb))
        previous(kind, value, tb)

    sys.excepthook = hook


def run_self_test(
    model: str, dtype: str | None, device: str | None, quant: str | None = None
) -> int:
    """Load and generate through the window's own worker thread, headless; print `done`."""
    from PySide6.QtCore import QCoreApplication, QTimer

    from desktop.controller import EngineController
    from desktop.self_test import SelfTest

    app = QCoreApplication.instance() or QCoreApplication([sys.argv[0]])
    controller = EngineController()
    # A QObject living on this (main) thread, so the worker's answers arrive as queued calls here
    # rather than running inside the worker thread as plain Python callables would.
    check = SelfTest(
        controller,
        GenerationRequest(
            prompt=SELF_TEST_PROMPT, params=GREEDY, max_new_tokens=SELF_TEST_TOKENS, report_top=5
        ),
    )
    check.done.connect(app.quit)
    QTimer.singleShot(
        0, lambda: controller.load(model, dtype or "auto", device or "auto", quant or "")
    )
    app.exec()
    controller.shutdown()
    if check.failure is not None:
        sys.stderr.write("self-test failed: " + " ".join(check.failure.split()) + "\n")
        return 2
    if check.result is None:
        sys.stderr.write("self-test failed: the engine stopped without an answer\n")
        return 2
    described = check.info.extra if check.info is not None else {}
    sys.stdout.write(json.dumps(done_line(check.result, described), ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0


def create_settings():
    from PySide6.QtCore import QSettings

    from desktop.paths import config_dir

    return QSettings(str(config_dir() / "loopchat.ini"), QSettings.Format.IniFormat)


def apply_look(app) -> None:
    """App icon and the small style sheet; colours come from the system palette (light or dark)."""
    from PySide6.QtGui import QIcon

    from desktop.resources import resource_path

    icon = resource_path("icons/loopchat.svg")
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    style = resource_path("styles/app.qss")
    if style.is_file():
        icons = resource_path("icons").as_posix()
        app.setStyleSheet(style.read_text(encoding="utf-8").replace("@ICONS@", icons))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        logging.basicConfig(level=logging.WARNING)
        return run_self_test(args.self_test, args.dtype, args.device, args.quant)

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Loopchat")
    app.setOrganizationName("Loopchat")
    app.setDesktopFileName("loopchat")
    setup_logging()
    log_unhandled_exceptions()
    settings = create_settings()

    from desktop.theme import apply_theme, saved_theme

    apply_look(app)
    apply_theme(app, os.environ.get("LOOPCHAT_THEME") or saved_theme(settings))

    from desktop.main_window import MainWindow
    from desktop.settings_values import setting_str

    if args.dtype:
        settings.setValue("engine/dtype", args.dtype)
    if args.device:
        settings.setValue("engine/device", args.device)
    window = MainWindow(settings)
    window.show()
    window.start(args.model or setting_str(settings, "models/last", "") or None)
    code = app.exec()
    if window.controller.running:
        # Closed during a cold `import torch`, which nothing can interrupt: everything is saved
        # (the window saved and purged on close), so exit now rather than wait for the import.
        logging.shutdown()
        os._exit(code)
    return code
