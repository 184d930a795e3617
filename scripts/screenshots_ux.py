"""Take the UX screenshots of the real window with the built-in model, at 800×600 and 1400×900,
light and dark (docs/ux-<view>-<W>x<H>-<theme>.png):

- issue 16's: first start (with issue 26's model bar above the chat), a reply while the prompt is
  read, editing a message, the settings pane, the model chooser mid-download and the download in
  the status bar, a reply with two versions (a branch) and step mode after three clicks;
- issue 26's: a message too long for the context (Send off, the hint, "Keep the last part that
  fits"), the top-k panel's Branch button on a selected row and the Undo notice after the branch
  (in ux-branch), the settings with the system prompt's section (this chat, presets, "Use for new
  chats") and speculative decoding, a reply with a highlighted code block and a quote beside pinned
  conversations (ux-code, ux-pinned), the model chooser with its RAM hints, "Opened before" and
  Cancel, and the attention dock at the default 1180×760 (ux-attention-dock-1180x760-<theme>);
- the README's see-inside pictures (docs/screenshot-surprisal.png, docs/screenshot-attention.png)
  and issue 25's speculative decoding (docs/screenshot-speculative.png: a reply in Tokens view,
  kept guesses underlined, rejected ones struck out; docs/screenshot-speculative-step.png: step
  mode on a rejected guess and its residual), at 1400×900, light;
- issue 24's remote servers (`--only remote`; it starts a llama.cpp server on 127.0.0.1 serving the
  built-in model): docs/screenshot-servers.png (Models → Servers… after Test connection),
  docs/screenshot-remote-chat.png (a reply from the server with its top-k panel) and
  docs/screenshot-remote-attention.png (the attention view greyed, with its reason);
- issue 23's GGUF files (`--only gguf`; a made-up home where LM Studio, Ollama and Jan hold GGUF
  files, the built-in model among them as Q8_0): docs/screenshot-gguf-chooser.png (the chooser's
  "GGUF files on this computer", runnable and greyed rows) and docs/screenshot-gguf-chat.png (a
  reply from the GGUF model with its top-k panel).

    python scripts/screenshots_ux.py --out docs [--model builtin] [--only GROUP,...]

One command, no network, the same pictures each run (fixed seeds, fixed prompts, each shot taken
at a fixed event rather than after a delay; only machine facts such as tok/s and free memory
change). Under Xvfb when it is installed (`xvfb-run`; the script starts it), so a shot is what the
screen shows, dialogs over their window included; otherwise offscreen, grabbing the widgets. The
download is served by the tests' fake Hub (tests/hub_server.py) from a sharded copy of the built-in
model, held before its third shard. Speculative decoding uses the built-in draft model when
resources/builtin_draft has its weights, else prompt lookup. The code block is an imported
conversation (the built-in model writes no code).
"""

from __future__ import annotations

import argparse
import contextlib
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
DOCK_SIZE = (1180, 760)
"""The window's default size: the attention dock is shown at it."""
SPEC_SEED = 3
SPEC_PROMPTS = ('What does "loop" mean?', 'What does "loop" mean? Say it again.')
"""Speculative decoding: the second question repeats the first, so prompt lookup has text to
guess from."""
STEP_CLICKS = 30
SYSTEM_PROMPT = "Answer in one short sentence."
LONG_MESSAGE = " ".join(
    f"Paragraph {i}: a loop repeats a block of instructions until its condition is false, "
    "and each pass through it is called an iteration."
    for i in range(1, 120)
)
"""A message far longer than the built-in model's context."""
"""A catalogue entry, so the chooser shows the download on its own row."""


# -- the event loop --------------------------------------------------------------------------


def wait_for(signal, timeout_ms: int = 120_000, also=None) -> list:
    """Run the event loop until `signal` (or `also`) fires; its arguments."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop, got = QEventLoop(), []
    for each in (signal, also) if also is not None else (signal,):
        each.connect(lambda *args: (got.extend(args), loop.quit()))
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()
    return got


def settle(ms: int = 150) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def greedy_reply(window, prompt: str = PROMPT, tokens: int = 48):
    """Send `prompt` with greedy sampling and the fixed seed; the finished reply's message."""
    window.sampling.seed.setText(str(SEED))
    window.sampling.temperature.setValue(0.0)
    window.sampling.max_new_tokens.setValue(tokens)
    window.input.setPlainText(prompt)
    window.send(prompt)
    wait_for(window.reply_finished)
    return window.chat.messages[-1]


def word_with_rivals(reply) -> int | None:
    """The least likely of the reply's first 12 word steps (its top-k rows are worth seeing)."""
    words = [i for i, s in enumerate(reply.steps) if s["text"].strip().isalpha()]
    return min(words[:12], key=lambda i: reply.steps[i]["prob"]) if words else None


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
    window.controller.worker._engine.prefill_chunk = 4  # the front door's setter
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

    # A branch, as a user makes one: Tokens on the last reply, a click on its third token, the
    # model's second choice selected in the top-k panel (its Branch button shows), then Branch:
    # the card shows ‹ 2/2 › and the banner offers Undo.
    card = [c for c in window.chat.messages if c.role == "assistant"][-1]
    card.set_token_view(True)
    card.token_clicked.emit(card, 2)
    rows = window.topk.shown_rows()
    window.topk.select(next(i for i, r in enumerate(rows) if not r[3]))
    settle(300)
    save(window, out / f"ux-topk-branch-{tag}.png")
    window.topk.branch_button.click()
    wait_for(window.reply_finished)
    settle(300)
    save(window, out / f"ux-branch-{tag}.png")
    window.banner.hide()

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

    # A message too long for the context: Send is off, the hint says why and what to do, and
    # "Keep the last part that fits" is offered. Nothing is sent, so nothing changes after it.
    window.input.setPlainText(LONG_MESSAGE)
    settle(300)
    save(window, out / f"ux-too-long-{tag}.png")
    window.input.clear()

    # The settings pane dragged open until every field shows, as a user would; as a new user
    # sees them (the seed fixed above for repeatable replies is cleared again), with a system
    # prompt for this chat kept as a preset, and speculative decoding in the list.
    window.input.clear()
    window.sampling.seed.clear()
    box = window.sampling.prompt_box
    box.editor.setPlainText(SYSTEM_PROMPT)
    box.save_preset("Short answers")
    side = window.side
    fields = side.widget(side.count() - 1).widget()  # the settings are the side panel's last part
    need = fields.sizeHint().height() + 4
    sizes = [0] * side.count()  # hidden parts (the step-mode panel) get nothing
    sizes[-1] = need
    sizes[side.count() - 2] = max(side.height() - need, 0)
    side.setSizes(sizes)
    settle(200)
    # Where the panel is too short for all (800×600), scrolled down to the last setting.
    side.widget(side.count() - 1).ensureWidgetVisible(window.sampling.draft.k, 0, 4)
    settle(200)
    save(window, out / f"ux-settings-{tag}.png")
    window.close()


CODE_REPLY = """\
A loop walks over the items one at a time; in Python:

```python
def longest(words: list[str]) -> str:
    \"\"\"The longest word (the first of equals).\"\"\"
    best = ""
    for word in words:  # one pass
        if len(word) > len(best):
            best = word
    return best
```

> A loop is a sequence of instructions that is repeated until a condition is reached.

It reads each word once, so it takes time in proportion to the list's length.
"""
CONVERSATIONS = (
    ("The longest word in a list", "How do I find the longest word in a list?", CODE_REPLY,
     1_764_480_000),
    ("Define photosynthesis", "Define photosynthesis.",
     "The process by which green plants use sunlight to make food from carbon dioxide and water.",
     1_764_390_000),
    ("Opposite of generous", 'What is the opposite of "generous"?',
     "Mean, or stingy: unwilling to give or spend.", 1_764_300_000),
)  # fmt: skip


def conversation(title: str, question: str, answer: str, created: int) -> dict:
    """An exported conversation (the format File → Import reads)."""
    return {
        "format": "loopchat-conversation",
        "version": 1,
        "title": title,
        "model": "Llama-2-7b-chat",
        "created_at": created,
        "messages": [
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "content": answer,
                "stop_reason": "eos",
                "timings": {"generated_tokens": 120, "decode_tokens_per_s": 21.5},
            },
        ],
    }


def shoot_library(model: str, tag: str, home: Path, size, theme: str, out: Path) -> None:
    """A reply with a fenced code block (highlighted) and a block quote, imported (the built-in
    model writes no code), in a list with pinned conversations; then the list with another
    pinned chat open."""
    window = new_window(home / "library", size, theme)
    window.start(None) if model == "builtin" else window.load_model(model)
    wait_for(window.model_ready)
    ids = [window.store.import_json(conversation(*c)) for c in CONVERSATIONS]
    window.library.pin(ids[0], True)
    window.library.pin(ids[2], True)
    window.library.refresh()
    window.conversations.open_requested.emit(ids[0])
    settle(500)
    save(window, out / f"ux-code-{tag}.png")
    window.conversations.open_requested.emit(ids[2])
    settle(300)
    save(window, out / f"ux-pinned-{tag}.png")
    window.close()


def shoot_chooser(model: str, tag: str, home: Path, size, theme: str, out: Path) -> None:
    """The model chooser over its window: the catalogue with whether each model fits this
    computer's memory, the open model ticked, the folders opened before, and Cancel."""
    window = new_window(home / "chooser", size, theme)
    folder = home / "chooser" / "models" / "dictionary-llama"
    if not folder.is_dir():
        shutil.copytree(model_folder(model), folder)
    window.settings.setValue("models/recent", [str(folder)])
    window.start(None) if model == "builtin" else window.load_model(model)
    wait_for(window.model_ready)
    chooser = window.show_model_chooser()
    settle(400)
    save(window, out / f"ux-chooser-{tag}.png")
    chooser.close()
    window.close()


def shoot_dock(model: str, theme: str, home: Path, out: Path) -> None:
    """The attention dock open at the default size (1180×760): the chat keeps its width, the
    dock sits below it."""
    window = new_window(home / f"dock-{theme}", DOCK_SIZE, theme)
    window.start(None) if model == "builtin" else window.load_model(model)
    wait_for(window.model_ready)
    reply = greedy_reply(window)
    reply.set_token_view(True)
    window.attention.action.setChecked(True)
    settle(200)
    index = word_with_rivals(reply)
    reply.token_clicked.emit(reply, index)  # the top-k panel describes it too
    window.attention.select(reply, index)
    wait_for(window.attention.shown)
    settle(300)
    save(window, out / f"ux-attention-dock-{DOCK_SIZE[0]}x{DOCK_SIZE[1]}-{theme}.png")
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
    reply = greedy_reply(window, 'What does "ephemeral" mean?')
    window.surprisal.action.setChecked(True)
    wait_for(window.surprisal.applied)
    settle(300)
    save(window, out / "screenshot-surprisal.png")
    window.surprisal.action.setChecked(False)

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


def draft_spec() -> str:
    """The built-in draft model when it is there, else prompt lookup (no second model)."""
    from engine.loading.builtin import builtin_dir

    have = (builtin_dir("builtin_draft") / "model.safetensors").is_file()
    return "builtin-draft" if have else "lookup"


def speculative_window(model: str, home: Path, name: str):
    """A 1400×900 light window with speculative decoding on, sampling at temperature 1 with a
    fixed seed (so some guesses are rejected), and the open chat holding text to look up."""
    window = new_window(home / name, (1400, 900), "light")
    window.start(None) if model == "builtin" else window.load_model(model)
    wait_for(window.model_ready)
    failed: list[str] = []
    window.controller.draft_failed.connect(failed.append)
    window.sampling.draft.set_spec(draft_spec(), 4)
    wait_for(window.controller.draft_ready, also=window.controller.draft_failed)
    if failed:  # the draft model would not load: say why, and show prompt lookup instead
        log.warning("  draft %s refused (%s); prompt lookup instead", draft_spec(), failed[0])
        window.sampling.draft.set_spec("lookup", 4)
        wait_for(window.controller.draft_ready)
    window.sampling.seed.setText(str(SPEC_SEED))
    window.sampling.temperature.setValue(1.0)
    window.sampling.max_new_tokens.setValue(64)
    return window


def shoot_speculative(model: str, home: Path, out: Path) -> None:
    """Issue 25's pictures: a reply in Tokens view with the drafted tokens that were kept
    underlined and the rejected guesses struck out; then step mode paused on a checked guess."""
    window = speculative_window(model, home, "spec")
    for text in SPEC_PROMPTS:
        window.input.setPlainText(text)
        window.send(text)
        wait_for(window.reply_finished)
    reply = window.chat.messages[-1]
    reply.set_token_view(True)
    drafted = [i for i, s in enumerate(reply.steps) if s.get("drafted")]
    if drafted:  # a kept guess the model was unsure of: its top-k has rows to see
        unsure = min(drafted, key=lambda i: abs(reply.steps[i]["prob"] - 0.5))
        reply.token_clicked.emit(reply, unsure)
    settle(300)
    save(window, out / "screenshot-speculative.png")
    window.close()

    # Step mode on the second question (the first answer is there for prompt lookup): Next
    # token until a guess is rejected where the model gave it some chance (the residual it was
    # drawn from then has rows), else until any sampled check shows.
    window = speculative_window(model, home, "spec-step")
    window.input.setPlainText(SPEC_PROMPTS[0])
    window.send(SPEC_PROMPTS[0])
    wait_for(window.reply_finished)
    window.step_mode.action.setChecked(True)
    window.input.setPlainText(SPEC_PROMPTS[1])
    best = None
    for click in range(2 * STEP_CLICKS):
        window.step_mode.next_token()
        wait_for(window.step_mode.shown, 60_000)
        settle(100)
        reply = window.session.reply
        if reply is None or not window.controller.paused:
            break
        check = reply.steps[-1].check if reply.steps else None
        if check is None or check.u is None:
            continue
        wanted = not check.accepted and check.p > 0.01 and len(check.residual) > 1
        if wanted or click >= STEP_CLICKS:
            best = click + 1
            break
    log.info("  step mode: a checked guess at click %s", best)
    settle(300)
    save(window, out / "screenshot-speculative-step.png")
    window.stop()
    window.close()


@contextlib.contextmanager
def serve_builtin(folder: Path):
    """A llama.cpp server (llama-cpp-python) on 127.0.0.1 serving the built-in model written as
    a GGUF file into `folder`; yields its base URL and stops it after."""
    from tests.fixtures.llama_server import (
        server_missing,
        start_server,
        stop_server,
        write_builtin_gguf,
    )

    missing = server_missing()
    if missing:
        raise SystemExit(missing)
    folder.mkdir(parents=True, exist_ok=True)
    gguf = write_builtin_gguf(folder / "builtin-f32.gguf")
    server = start_server(gguf, folder / "server.log", "--model_alias", "loopchat-builtin")
    try:
        yield server.base_url
    finally:
        stop_server(server.process)


def shoot_remote(home: Path, out: Path) -> None:
    """Issue 24's pictures at 1400×900, light, against a real llama.cpp server this script
    starts on 127.0.0.1 serving the built-in model (tests/fixtures/llama_server.py): the Servers
    dialog after Test connection (docs/screenshot-servers.png), a remote chat with its top-k
    panel (docs/screenshot-remote-chat.png) and the attention view greyed with its reason
    (docs/screenshot-remote-attention.png)."""
    import keyring

    from desktop.servers import remote_path
    from tests.fixtures.memory_keyring import memory_backend

    keyring.set_keyring(memory_backend()())  # the example key never reaches the real keyring
    with serve_builtin(home / "server") as base_url:
        window = new_window(home / "remote", (1400, 900), "light")
        dialog = window.show_servers()
        dialog.name.setText("Lab server")
        dialog.url.setText(base_url)
        dialog.key.setText("sk-screenshot-example")
        server = dialog.save()
        dialog.test_connection()
        wait_for(dialog.tested, 30_000)
        settle(300)
        save(dialog, out / "screenshot-servers.png")
        dialog.close()

        chooser = window.show_model_chooser()
        for _ in range(100):
            if chooser.server_rows.model_rows():
                break
            settle(100)
        model = chooser.server_rows.model_rows()[0]["path"].split("/", 1)[1]
        chooser.close()
        window.load_model(remote_path(server.id, model))
        wait_for(window.model_ready)
        reply = greedy_reply(window)
        reply.set_token_view(True)
        index = word_with_rivals(reply)
        if index is not None:
            reply.token_clicked.emit(reply, index)
        settle(300)
        save(window, out / "screenshot-remote-chat.png")
        window.attention.action.setChecked(True)
        settle(300)
        save(window, out / "screenshot-remote-attention.png")
        window.close()
        settle(300)


def builtin_gguf_files(home: Path) -> tuple[Path, dict]:
    """A made-up home as other apps leave it: LM Studio holds the built-in model as a Q8_0 GGUF
    file, Ollama the same blob under a name and tag, and two files Loopchat cannot run (another
    architecture; Llama 3's tokenizer). Returns (home, environment) for the chooser's search."""
    import hashlib
    import json

    from transformers import LlamaForCausalLM

    from engine.loading.builtin import builtin_dir
    from tests.fixtures.gguf_files import mostly, write_gguf
    from tests.test_gguf_desktop import odd_gguf

    folder = builtin_dir()
    lm = home / ".lmstudio" / "models" / "loopchat" / "dictionary-GGUF"
    lm.mkdir(parents=True, exist_ok=True)
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype="float32").eval()
    template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    gguf = write_gguf(
        model,
        lm / "loopchat-dictionary.Q8_0.gguf",
        folder / "tokenizer.model",
        mostly("Q8_0", "Q8_0", "Q8_0"),
        chat_template=template,
        file_type=7,
    )
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    ollama = home / ".ollama" / "models"
    (ollama / "blobs").mkdir(parents=True, exist_ok=True)
    (ollama / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "dictionary"
    manifest.mkdir(parents=True, exist_ok=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}
    (manifest / "latest").write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    odd_gguf(lm.parent / "qwen2-0.5b-instruct.Q8_0.gguf", "qwen2")
    odd_gguf(home / "jan" / "models" / "llama3" / "llama-3-8b-instruct.Q4_0.gguf", "llama", "gpt2")
    return gguf, {"HF_HOME": str(home / "hf"), "XDG_DATA_HOME": str(home / ".local" / "share")}


def shoot_gguf(home: Path, out: Path) -> None:
    """Issue 23's pictures at 1400×900, light: the chooser listing the GGUF files found on this
    (made-up) computer, runnable and greyed (docs/screenshot-gguf-chooser.png), and a chat with
    the GGUF model and its top-k panel (docs/screenshot-gguf-chat.png)."""
    user = home / "gguf-user"
    gguf, env = builtin_gguf_files(user)
    window = new_window(home / "gguf", (1400, 900), "light")
    window.start(None)
    wait_for(window.model_ready)
    window.gguf_where = (user, env)
    chooser = window.show_model_chooser()
    wait_for(chooser.gguf_listed, 60_000)
    chooser.items.scrollToBottom()
    settle(400)
    save(window, out / "screenshot-gguf-chooser.png")
    chooser.close()
    window.load_model(str(gguf))
    wait_for(window.model_ready)
    reply = greedy_reply(window)
    reply.set_token_view(True)
    index = word_with_rivals(reply)
    if index is not None:
        reply.token_clicked.emit(reply, index)
    settle(300)
    save(window, out / "screenshot-gguf-chat.png")
    window.close()
    settle(300)


def apply_theme_for(app, theme: str) -> None:
    from desktop.app import apply_look
    from desktop.theme import apply_theme

    apply_look(app)
    apply_theme(app, theme)


GROUPS = (
    "chat",
    "download",
    "library",
    "chooser",
    "dock",
    "inside",
    "speculative",
    "remote",
    "gguf",
)


def shoot(model: str, theme: str, size: tuple[int, int], out: Path, only: set[str]) -> None:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    apply_theme_for(app, theme)
    tag = f"{size[0]}x{size[1]}-{theme}"
    log.info("%s", tag)
    home = Path(tempfile.mkdtemp(prefix="loopchat-shots-"))
    try:
        if "chat" in only:
            shoot_chat(model, tag, home, size, theme, out)
        if "library" in only:
            shoot_library(model, tag, home, size, theme, out)
        if "chooser" in only:
            shoot_chooser(model, tag, home, size, theme, out)
        if "download" in only:
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
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated groups of shots to take (default: all of {','.join(GROUPS)})",
    )
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
    only = set(args.only.split(",")) if args.only else set(GROUPS)
    per_size = {"chat", "library", "chooser", "download"}
    for theme in THEMES:
        for size in SIZES:
            if only & per_size:
                shoot(args.model, theme, size, out, only)
    home = Path(tempfile.mkdtemp(prefix="loopchat-shots-"))
    try:
        if "dock" in only:
            for theme in THEMES:
                apply_theme_for(app, theme)
                shoot_dock(args.model, theme, home, out)
        apply_theme_for(app, "light")
        if "inside" in only:
            shoot_inside(args.model, home, out)
        if "speculative" in only:
            shoot_speculative(args.model, home, out)
        if "remote" in only:
            shoot_remote(home, out)
        if "gguf" in only:
            shoot_gguf(home, out)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
