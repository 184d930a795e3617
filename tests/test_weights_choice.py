"""Models → Weights: 16-bit / 8-bit / 4-bit, per model, remembered; the status bar says which and
how the engine runs it (kernel and threads in the tooltip)."""

from __future__ import annotations

from pathlib import Path

from tests.window_helpers import load, make_window


def test_weights_choice_reloads_and_is_remembered_per_model(
    qtbot, home: Path, tiny_model_dir: Path, tiny_hf_dir: Path
) -> None:
    win = make_window(qtbot, home, **{"engine/dtype": "bfloat16"})
    info = load(qtbot, win, tiny_model_dir)
    assert info.extra["quant"] == "none" and win.menus.weights_actions["none"].isChecked()
    assert "Kernel:" in win.status_line.device_label.toolTip()
    with qtbot.waitSignal(win.model_ready, timeout=120_000) as ready:
        win.menus.weights_actions["int8"].trigger()
    assert ready.args[0].extra["quant"] == "int8"
    assert "8-bit" in win.status_line.device_label.text()
    assert "Weights: int8" in win.status_line.device_label.toolTip()
    other = load(qtbot, win, tiny_hf_dir)  # another model keeps its own (default) choice
    assert other.extra["quant"] == "none" and win.menus.weights_actions["none"].isChecked()
    win.close()

    again = make_window(qtbot, home, **{"engine/dtype": "bfloat16"})
    info = load(qtbot, again, tiny_model_dir)
    assert info.extra["quant"] == "int8" and again.menus.weights_actions["int8"].isChecked()
    again.close()


def test_tooltip_says_when_loopchats_compiled_kernel_runs_the_weights(
    qtbot, home: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    import pytest

    from engine.kernels import native

    if native.load() is None:
        pytest.skip(f"no compiled kernel here: {native.unavailable_reason()}")
    monkeypatch.setenv("LOOPCHAT_KERNEL", "int8native")
    win = make_window(qtbot, home, **{"engine/dtype": "bfloat16"})
    load(qtbot, win, tiny_model_dir)
    before = win.status_line.device_label.toolTip()
    assert "compiled kernel" not in before  # 16-bit weights: torch's products
    assert "Norms and rotary embedding: Loopchat's compiled C" in before  # but compiled norms
    with qtbot.waitSignal(win.model_ready, timeout=120_000) as ready:
        win.menus.weights_actions["int8"].trigger()
    assert ready.args[0].extra["kernel"] == "int8native"
    tip = win.status_line.device_label.toolTip()
    assert "Kernel: int8native" in tip and f"its {native.load().isa} build" in tip
    win.close()
