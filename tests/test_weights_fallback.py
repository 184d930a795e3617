"""Models → Weights when the 8/4-bit load fails: the choice is remembered only once it has loaded,
the model opens in 16-bit instead (with a notice saying why), and Weights works on whatever is open.

The failure is a real one, not a mock: the engine finds no room to quantize into. Its cache folder
cannot be made (a file stands in its place, as after a botched copy or another program's mistake)
and Python's temporary folder, where it then quantizes instead, is unusable too (`tempfile.tempdir`
is the documented setting, like TMPDIR). A 16-bit load writes nothing there, so it still opens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from desktop import model_loading
from tests.window_helpers import greedy, load, make_window

WAIT_MS = 60_000


def leave_no_room_to_quantize(monkeypatch, tmp_path: Path):
    """Make every 8/4-bit load in this test fail in the engine; returns a function that undoes it
    (the user has fixed their folders)."""
    weights = Path(os.environ["LOOPCHAT_HOME"]) / "cache" / "weights"
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(weights, ignore_errors=True)
    weights.write_text("a file where the quantized weights' folder goes")
    blocker = tmp_path / "temp-is-a-file"
    blocker.write_text("")
    original = tempfile.gettempdir()
    monkeypatch.setattr(tempfile, "tempdir", str(blocker / "tmp"))

    def repair() -> None:
        weights.unlink()
        monkeypatch.setattr(tempfile, "tempdir", original)

    return repair


def remembered(win, folder: Path) -> str:
    """The weights the settings file holds for `folder`, as the next start would read them."""
    win.settings.sync()
    return model_loading.weights_for(win.settings, str(folder))


def test_a_failed_weights_choice_is_not_remembered_and_falls_back_to_16_bit(
    qtbot, home: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    leave_no_room_to_quantize(monkeypatch, home)
    notices: list[str] = []
    win.error_shown.connect(notices.append)
    with qtbot.waitSignal(win.model_ready, timeout=WAIT_MS) as ready:
        win.menus.weights_actions["int8"].trigger()
    assert ready.args[0].extra["quant"] == "none"
    assert remembered(win, tiny_model_dir) == "none"
    assert win.menus.weights_actions["none"].isChecked()
    # One notice: what failed (8-bit, and the engine's reason) and what runs now.
    (notice,) = notices
    assert "8-bit" in notice and "16-bit" in notice and "cannot write quantized weights" in notice
    assert win.banner.isVisible() and win.banner.kind == "notice"
    assert win.banner.label.text() == notice
    win.close()

    again = make_window(qtbot, home)  # the next start opens the model as it last loaded
    info = load(qtbot, again, tiny_model_dir)
    assert info.extra["quant"] == "none" and not again.banner.isVisible()
    again.close()


def test_a_stored_bad_choice_falls_back_at_start_and_is_cleared(
    qtbot, home: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    """A choice remembered by an older version (or a cache broken since) must not stop the app
    from opening the model at every start."""
    leave_no_room_to_quantize(monkeypatch, home)
    key = model_loading.weights_setting(str(tiny_model_dir))
    win = make_window(qtbot, home, **{key: "int8"})
    with qtbot.waitSignal(win.model_ready, timeout=WAIT_MS) as ready:
        win.start(str(tiny_model_dir))
    assert ready.args[0].extra["quant"] == "none"
    assert remembered(win, tiny_model_dir) == "none"
    assert win.banner.kind == "notice" and "16-bit" in win.banner.label.text()
    assert win.send_button.isEnabled()
    win.close()


def test_weights_work_after_the_fallback(
    qtbot, home: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    repair = leave_no_room_to_quantize(monkeypatch, home)
    key = model_loading.weights_setting(str(tiny_model_dir))
    win = make_window(qtbot, home, **{key: "int8"})
    with qtbot.waitSignal(win.model_ready, timeout=WAIT_MS):
        win.start(str(tiny_model_dir))
    repair()  # the user fixed their folders; 8-bit can load now
    with qtbot.waitSignal(win.model_ready, timeout=WAIT_MS) as ready:
        win.menus.weights_actions["int8"].trigger()
    assert ready.args[0].extra["quant"] == "int8" and win.menus.weights_actions["int8"].isChecked()
    assert remembered(win, tiny_model_dir) == "int8"  # loaded, so now remembered
    win.close()


def test_recent_models_opens_the_model_after_a_failed_choice(
    qtbot, home: Path, tiny_model_dir: Path, tiny_hf_dir: Path, monkeypatch
) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    load(qtbot, win, tiny_hf_dir)
    leave_no_room_to_quantize(monkeypatch, home)
    with qtbot.waitSignal(win.error_shown, timeout=WAIT_MS):
        win.menus.weights_actions["int4"].trigger()
    qtbot.waitUntil(lambda: not win.model_loading(), timeout=WAIT_MS)
    load(qtbot, win, tiny_model_dir)  # another model, then back through Recent models
    (recent,) = [a for a in win.menus.recent_menu.actions() if a.data() == str(tiny_hf_dir)]
    with qtbot.waitSignal(win.model_ready, timeout=WAIT_MS) as ready:
        recent.trigger()
    assert ready.args[0].path == str(tiny_hf_dir) and ready.args[0].extra["quant"] == "none"
    assert win.current_model_path() == str(tiny_hf_dir)
    win.close()


def test_weights_while_a_model_loads_say_to_wait_and_keep_that_load(
    qtbot, home: Path, tiny_model_dir: Path, tiny_hf_dir: Path
) -> None:
    """Today's choice would apply to the model being replaced and reopen it after the new one."""
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    notices: list[str] = []
    win.error_shown.connect(notices.append)
    with qtbot.waitSignal(win.model_ready, timeout=WAIT_MS) as ready:
        win.load_model(str(tiny_hf_dir))
        win.menus.weights_actions["int8"].trigger()  # still loading
    assert ready.args[0].path == str(tiny_hf_dir)
    assert notices and "loading" in notices[0].lower()
    qtbot.wait(300)  # nothing else was queued behind that load
    assert win.current_model_path() == str(tiny_hf_dir) and win.model_info.extra["quant"] == "none"
    assert win.menus.weights_actions["none"].isChecked()
    assert remembered(win, tiny_model_dir) == "none" and remembered(win, tiny_hf_dir) == "none"
    win.close()


def test_weights_with_no_model_open_say_what_to_do(qtbot, home: Path) -> None:
    from tests.window_helpers import broken_model_folder

    broken = broken_model_folder(home)
    win = make_window(qtbot, home)
    with qtbot.waitSignal(win.error_shown, timeout=WAIT_MS):
        win.load_model(str(broken))
    with qtbot.waitSignal(win.error_shown, timeout=5_000) as shown:
        win.menus.weights_actions["int4"].trigger()
    message = shown.args[0]
    # Names the model that failed and where to open one; the choice is not kept.
    assert "broken" in message and "Models → Choose or download a model" in message
    assert win.menus.weights_actions["none"].isChecked()
    assert remembered(win, broken) == "none"
    win.close()


def test_weights_while_a_reply_streams_keep_the_chat(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    """The reply stops (kept, as a stopped reply) and the model reloads; nothing is lost."""
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 400)
    finished: list = []
    win.reply_finished.connect(finished.append)
    win.input.setPlainText("Tell me a long story")
    with qtbot.waitSignal(win.token_shown, timeout=WAIT_MS):
        win.send(win.input.toPlainText())
    with qtbot.waitSignal(win.model_ready, timeout=WAIT_MS) as ready:
        win.menus.weights_actions["int8"].trigger()
    assert ready.args[0].extra["quant"] == "int8"
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert finished[0]["stop_reason"] == "cancelled" and not finished[0].get("error")
    assert [t["role"] for t in win.history] == ["user", "assistant"]
    assert win.history[-1]["content"] == finished[0]["text"]
    assert remembered(win, tiny_model_dir) == "int8"
    win.close()


def test_a_model_that_fails_in_16_bit_too_says_both_and_forgets_the_choice(
    qtbot, home: Path
) -> None:
    from tests.window_helpers import broken_model_folder

    broken = broken_model_folder(home)
    win = make_window(qtbot, home, **{model_loading.weights_setting(str(broken)): "int4"})
    errors: list[str] = []
    win.error_shown.connect(errors.append)
    win.start(str(broken))
    qtbot.waitUntil(lambda: bool(errors) and not win.model_loading(), timeout=WAIT_MS)
    (error,) = errors  # one message, after both tries
    assert "4-bit" in error and "16-bit" in error and win.banner.kind == "error"
    assert remembered(win, broken) == "none" and win.model_info is None
    win.close()
