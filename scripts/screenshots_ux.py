"""Take the issue-16 screenshots of the real window with the built-in model, at 800×600 and
1400×900, light and dark: first start, a reply while the prompt is read, editing a message, the
settings pane, the model chooser mid-download and the download in the status bar; also a reply
with two versions (a branch) and step mode after three clicks. Also the README's see-inside
pictures (docs/screenshot-surprisal.png, docs/screenshot-attention.png) at 1400×900, light.

    python scripts/screenshots_ux.py --out docs [--model builtin]

One command, no network, the same pictures each run (a fixed seed, a fixed prompt, each shot taken
at a fixed event rather than after a delay). Under Xvfb when it is installed (`xvfb-run`; the
script starts it), so a shot is what the screen shows, dialogs over their window included;
otherwise offscreen, grabbing the widgets. The download is served by the tests' fake Hub
(tests/hub_server.py) from a sharded copy of the built-in model, held before its third shard.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("screenshots")
SIZES = ((800, 600), (1400, 900))
THEMES = ("light", "dark")
# Questions of the kinds the built-in model was trained on (a dictionary: see its model card),
# with straight quotes as in its training data (curly ones are byte pieces it has rarely seen).
PROMPT = 'What does "loop" mean?'
EARLIER = ("Define photosynthesis.", 'What is the opposite of "generous"?')
"""Two earlier turns, so editing the first shows what Send will replace."""
SEED = 7
SCREEN = "1600x1000x24"
SHARDS = 4
DOWNLOAD_REPO = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
"""A catalogue entry, so the chooser shows the download on its own row."""


# -- the event loop --------------------------------------------------------------------------


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


def save(window, path: Path) -> None:
    """What the screen shows over `window` (under X), else the window rendered offscreen. Layout
    and painting are done first, so a shot taken inside a signal handler is up to date."""
    from PySide6.QtCore import QEvent
    from PySide6.QtWidgets import QApplication

    QApplication.sendPostedEvents(None, QEvent.Type.LayoutRequest)
    if QApplication.platformName() == "xcb":
        for top in QApplication.topLevelWidgets():
            if top.isVisible():
                top.repaint()
        frame = window.frameGeometry()
        shot = window.screen().grabWindow(0, frame.x(), frame.y(), frame.width(), frame.height())
    else:
        shot = window.grab()
    shot.save(str(path))
    log.info("  %s", path.name)


# -- models ----------------------------------------------------------------------------------


def sharded_copy(model: Path, out: Path) -> Path:
    """`model` (one safetensors file) split into SHARDS files with an index, as big Hub repos
    are; a download held before one shard then shows real progress."""
    import json

    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        if (model / name).is_file():
            shutil.copy(model / name, out / name)
    tensors = load_file(str(model / "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i in range(SHARDS):
        part = names[i::SHARDS]
        file = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(out / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return out


def model_folder(model: str) -> Path:
    if model == "builtin":
        from engine.loading.builtin import builtin_dir

        return builtin_dir()
    return Path(model)


# -- shots -----------------------------------------------------------------------------------


def new_window(home: Path, size: tuple[int, int], theme: str):
    """A window as a fresh install of that size opens it (nothing remembered yet)."""
    from PySide6.QtCore import QSettings

    from desktop.main_window import MainWindow
    from desktop.views.window_layout import split_sizes

    home.mkdir(parents=True, exist_ok=True)
    os.environ["LOOPCHAT_HOME"] = str(home)
    os.environ["HF_HOME"] = str(home / "hf")  # an empty cache: the built-in model opens
    settings = QSettings(str(home / "loopchat.ini"), QSettings.Format.IniFormat)
    settings.setValue("engine/dtype", "float32")
    settings.setValue("view/theme", theme)
    window = MainWindow(settings)
    window.resize(*size)
    window.splitter.setSizes(split_sizes(size[0]))
    window.move(0, 0)
    window.show()
    settle()
    return window


def shoot_chat(model: str, tag: str, home: Path, size, theme: str, out: Path) -> None:
    """First start, reading the prompt, editing, the settings pane: one window, as a user goes."""
    window = new_window(home / "chat", size, theme)
    if model == "builtin":
        window.start(None)  # what a first start does with no model on the computer
    else:
        window.load_model(model)
    wait_for(window.model_ready)
    settle(300)
    save(window, out / f"ux-first-start-{tag}.png")
    window.sampling.seed.setText(str(SEED))  # the same replies every run

    window.sampling.max_new_tokens.setValue(48)
    for text in EARLIER:
        window.input.setPlainText(text)
        window.send(text)
        wait_for(window.reply_finished)

    # Read in small chunks, so there is progress to see (the earlier turns are cached: only
    # the new message is read); the shot is taken at the first chunk past half way.
    window.controller.worker._generator.prefill_chunk = 4
    shown = {"done": False}

    def grab_reading(progress) -> None:
        if not shown["done"] and 2 * progress.done >= progress.total:
            shown["done"] = True
            log.info("  reading %d / %d", progress.done, progress.total)
            save(window, out / f"ux-prefill-{tag}.png")

    window.prefill_shown.connect(grab_reading)
    window.input.setPlainText(PROMPT)
    window.send(PROMPT)
    wait_for(window.reply_finished)
    window.prefill_shown.disconnect(grab_reading)
    settle(300)

    # A branch: the last reply goes on from the model's second choice at its third token, and
    # the card shows ‹ 2/2 ›.
    reply = window.session.turns[-1]
    third = reply.steps[2]  # live and stored steps read alike: step["top"] is a list of dicts
    alternative = next(t["token_id"] for t in third["top"] if t["token_id"] != third["token_id"])
    window.branch_from(reply, 2, alternative)
    wait_for(window.reply_finished)
    settle(300)
    save(window, out / f"ux-branch-{tag}.png")

    # Step mode: three clicks on Next token, the sampler's stages in the side panel.
    window.step_mode.action.setChecked(True)
    window.input.setPlainText(EARLIER[0])
    for _ in range(3):
        window.step_mode.next_token()
        wait_for(window.step_mode.shown)
        settle(100)
    settle(300)
    save(window, out / f"ux-step-{tag}.png")
    window.stop()
    wait_for(window.reply_finished)
    window.step_mode.action.setChecked(False)
    settle(200)

    window.input.setPlainText("Half a thought")
    first = window.chat.messages[0]
    first.edit_button.click()
    settle(300)
    save(window, out / f"ux-edit-{tag}.png")
    window.escape()

    # The settings pane dragged open until every field shows, as a user would; as a new user
    # sees them (the seed fixed above for repeatable replies is cleared again).
    window.input.clear()
    window.sampling.seed.clear()
    side = window.side
    pane = side.widget(side.count() - 1).layout()  # the settings are the side panel's last part
    margins = pane.contentsMargins()
    title = pane.itemAt(0).widget().sizeHint().height()
    need = margins.top() + margins.bottom() + pane.spacing() + title
    need += window.sampling.sizeHint().height() + 2
    sizes = [0] * side.count()  # hidden parts (the step-mode panel) get nothing
    sizes[-1] = need
    sizes[side.count() - 2] = max(side.height() - need, 0)
    side.setSizes(sizes)
    settle(300)
    save(window, out / f"ux-settings-{tag}.png")
    window.close()


def shoot_download(model: Path, tag: str, home: Path, size, theme: str, out: Path) -> None:
    """The chooser while a model downloads, then the status bar once the chooser is closed."""
    from PySide6.QtCore import Qt

    from tests.hub_server import FakeHub

    release = threading.Event()
    source = sharded_copy(model, home / "served")
    with FakeHub() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        os.environ.pop("HF_HUB_OFFLINE", None)
        hub.add(DOWNLOAD_REPO, source)
        hub.hold[f"-00003-of-{SHARDS:05d}.safetensors"] = release
        window = new_window(home / "download", size, theme)
        chooser = window.show_model_chooser()
        rows = [chooser.items.item(i) for i in range(chooser.items.count())]
        (row,) = [
            r for r in rows if r.data(Qt.ItemDataRole.UserRole).get("repo_id") == DOWNLOAD_REPO
        ]
        chooser.items.setCurrentItem(row)
        chooser.accept_selected()
        for _ in range(400):
            settle(50)
            if chooser.progress.value() >= 400:  # two shards of four in
                break
        settle(300)
        save(chooser, out / f"ux-chooser-download-{tag}.png")
        chooser.close()
        settle(300)
        save(window, out / f"ux-download-status-{tag}.png")
        release.set()
        window.close()
        settle(300)
        os.environ.pop("HF_ENDPOINT", None)


def shoot_inside(model: str, home: Path, out: Path) -> None:
    """The README's see-inside pictures at 1400×900, light: the surprisal tint of a question and
    its answer, then the attention view of one token of the answer."""
    window = new_window(home / "inside", (1400, 900), "light")
    if model == "builtin":
        window.start(None)
    else:
        window.load_model(model)
    wait_for(window.model_ready)
    window.sampling.seed.setText(str(SEED))
    window.sampling.temperature.setValue(0.0)
    window.sampling.max_new_tokens.setValue(48)
    question = 'What does "ephemeral" mean?'
    window.input.setPlainText(question)
    window.send(question)
    wait_for(window.reply_finished)
    window.surprisal.action.setChecked(True)
    wait_for(window.surprisal.applied)
    settle(300)
    save(window, out / "screenshot-surprisal.png")
    window.surprisal.action.setChecked(False)

    reply = window.chat.messages[-1]
    reply.set_token_view(True)
    window.attention.action.setChecked(True)
    settle(200)
    # A word of the definition, past the quoted headword: what it looked back at is visible.
    words = [i for i, s in enumerate(reply.steps) if s["text"].strip().isalpha()]
    index = words[min(len(words) - 1, 6)]
    window.attention.select(reply, index)
    wait_for(window.attention.shown)
    settle(300)
    save(window, out / "screenshot-attention.png")
    window.close()


def apply_theme_for(app, theme: str) -> None:
    from desktop.app import apply_look
    from desktop.theme import apply_theme

    apply_look(app)
    apply_theme(app, theme)


def shoot(model: str, theme: str, size: tuple[int, int], out: Path) -> None:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    apply_theme_for(app, theme)
    tag = f"{size[0]}x{size[1]}-{theme}"
    log.info("%s", tag)
    home = Path(tempfile.mkdtemp(prefix="loopchat-shots-"))
    try:
        shoot_chat(model, tag, home, size, theme, out)
        shoot_download(model_folder(model), tag, home, size, theme, out)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- the command -----------------------------------------------------------------------------


def under_xvfb() -> None:
    """Run this script again inside a fresh Xvfb when there is one and no display was chosen."""
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY"):
        return
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    server = f"-screen 0 {SCREEN} -dpi 96 -nolisten tcp"
    os.execv(xvfb_run, [xvfb_run, "-a", "-s", server, sys.executable, *sys.argv])


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # which shot is being taken; the app's own chatter stays quiet
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default: docs)")
    parser.add_argument("--model", default="builtin", help="model folder, or builtin")
    args = parser.parse_args()
    under_xvfb()
    os.environ.setdefault("LOOPCHAT_THREADS", "2")  # the same numbers on every machine
    os.environ.setdefault("LANG", "C.UTF-8")
    os.environ["QT_SCALE_FACTOR"] = "1"
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Loopchat")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for theme in THEMES:
        for size in SIZES:
            shoot(args.model, theme, size, out)
    home = Path(tempfile.mkdtemp(prefix="loopchat-shots-"))
    try:
        apply_theme_for(app, "light")
        shoot_inside(args.model, home, out)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
