"""The reply's one state machine (desktop.reply_state, owned by desktop.controller): the table of
possible changes, each change emitted exactly once, and the states a real reply passes through
in the real window with the tiny model (normal, step mode, Stop, a failed load) — plus a branch
asked for mid-reply that starts whatever order the window's slots were connected in."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from desktop.controller import EngineController
from desktop.reply_state import ALLOWED, ReplyState
from tests.window_helpers import ask, broken_model_folder, greedy, load, make_window

S = ReplyState
PROMPT = "Tell me about loops"


@pytest.fixture
def controller(qtbot):
    ctl = EngineController()
    yield ctl
    assert ctl.shutdown()


def record(ctl) -> list[ReplyState]:
    """Every state the controller announces from now on, in order."""
    states: list[ReplyState] = []
    ctl.state_changed.connect(states.append)
    return states


@pytest.fixture
def win(qtbot, home: Path, tiny_model_dir: Path):
    window = make_window(qtbot, home)
    window.states = record(window.controller)
    load(qtbot, window, tiny_model_dir)
    greedy(window, 8)
    window.sampling.system_prompt.setPlainText("")
    yield window
    window.close()


def test_every_possible_change_is_emitted_once(controller) -> None:
    for old, targets in ALLOWED.items():
        for new in targets:
            controller._state = old
            states = record(controller)
            assert controller._transition(new)
            assert states == [new] and controller.state is new
            controller.state_changed.disconnect(states.append)


def test_an_impossible_change_is_logged_and_ignored(controller, caplog) -> None:
    impossible = [
        (old, new)
        for old, new in itertools.product(S, S)
        if old is not new and new not in ALLOWED[old]
    ]
    assert (S.IDLE, S.STREAMING) in impossible and (S.PAUSED, S.IDLE) in impossible
    for old, new in impossible:
        controller._state = old
        states = record(controller)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="desktop.controller"):
            assert not controller._transition(new)
        assert states == [] and controller.state is old
        assert "not a possible change" in caplog.text
        controller.state_changed.disconnect(states.append)
    # Staying in a state is no change: nothing emitted, nothing logged.
    controller._state = S.IDLE
    states = record(controller)
    caplog.clear()
    assert not controller._transition(S.IDLE)
    assert states == [] and not caplog.text


def test_the_flags_are_read_from_the_state(controller) -> None:
    controller._request = 7
    expect = {
        S.LOADING: (False, None, True),
        S.IDLE: (False, None, False),
        S.PREFILLING: (True, None, False),
        S.STREAMING: (True, None, False),
        S.PAUSED: (False, 7, False),
        S.STOPPING: (True, None, False),
        S.FAILED: (False, None, False),
    }
    for state, flags in expect.items():
        controller._state = state
        assert (controller.busy, controller.paused, controller.loading) == flags, state


def test_a_real_reply_goes_loading_idle_prefilling_streaming_idle(qtbot, win) -> None:
    seen: list = []
    ctl = win.controller
    ctl.state_changed.connect(lambda s: seen.append((s, ctl.busy, win.session.busy)))
    result = ask(qtbot, win, PROMPT)
    assert "error" not in result and result["generated_tokens"] >= 1
    assert win.states == [S.LOADING, S.IDLE, S.PREFILLING, S.STREAMING, S.IDLE]
    # IDLE is announced after the session has taken the reply's answer.
    assert seen[-1] == (S.IDLE, False, False)
    assert ctl.state is S.IDLE and not ctl.busy and ctl.paused is None


def click_next(qtbot, win) -> None:
    with qtbot.waitSignal(win.step_mode.shown, timeout=60_000):
        win.step_mode.next_token()
    qtbot.waitUntil(lambda: win.controller.state is S.PAUSED, timeout=60_000)
    QApplication.processEvents()


def test_step_mode_goes_streaming_paused_and_back(qtbot, win) -> None:
    win.step_mode.action.setChecked(True)
    win.input.setPlainText(PROMPT)
    del win.states[:]
    click_next(qtbot, win)
    assert win.states == [S.PREFILLING, S.STREAMING, S.PAUSED]
    assert win.controller.paused == win.session.request_id and not win.controller.busy
    assert win.stop_button.isEnabled() and win.step_mode.continue_button.isEnabled()
    click_next(qtbot, win)
    assert win.states[3:] == [S.STREAMING, S.PAUSED]
    with qtbot.waitSignal(win.reply_finished, timeout=60_000):
        win.step_mode.continue_reply()
    assert win.states[5:] == [S.STREAMING, S.IDLE]


def test_stop_while_streaming_goes_stopping_then_idle(qtbot, win) -> None:
    greedy(win, 64)
    stopped: list = []

    def stop_once(_step) -> None:
        if not stopped:
            stopped.append(win.controller.state)
            win.stop()

    win.token_shown.connect(stop_once)
    del win.states[:]
    result = ask(qtbot, win, PROMPT)
    assert stopped == [S.STREAMING]
    assert win.states == [S.PREFILLING, S.STREAMING, S.STOPPING, S.IDLE]
    assert result["stop_reason"] in ("cancelled", "eos", "max_tokens")


def test_stop_while_paused_goes_stopping_then_idle(qtbot, win) -> None:
    win.step_mode.action.setChecked(True)
    win.input.setPlainText(PROMPT)
    click_next(qtbot, win)
    del win.states[:]
    with qtbot.waitSignal(win.reply_finished, timeout=60_000) as done:
        win.stop()
        assert win.controller.state is S.STOPPING and win.controller.busy
    assert done.args[0]["stop_reason"] == "cancelled"
    assert win.states == [S.STOPPING, S.IDLE]


def test_a_failed_load_passes_through_failed_and_settles_idle(qtbot, home: Path) -> None:
    window = make_window(qtbot, home)
    states = record(window.controller)
    with qtbot.waitSignal(window.error_shown, timeout=60_000):
        window.load_model(str(broken_model_folder(home)))
    qtbot.waitUntil(lambda: window.controller.state is S.IDLE)
    assert states == [S.LOADING, S.FAILED, S.IDLE]
    assert not window.controller.loading and not window.models.loading()
    window.close()


def reconnect_last(signal, slot) -> None:
    signal.disconnect(slot)
    signal.connect(slot)


def reverse_slot_order(win) -> None:
    """Connect the controller's own slots on the worker after the window's (the opposite of the
    order they were made in), and the chat screen's state slot before its answer slots. The old
    design started a pending branch from a finished-slot that needed the controller's
    finished-slot to have run first, so this order dropped the branch."""
    ctl, worker, screen = win.controller, win.controller.worker, win.chat_screen
    new_design = hasattr(ctl, "state_changed")
    finished = ctl._on_finished if new_design else ctl._idle
    failed = ctl._on_failed if new_design else ctl._idle
    reconnect_last(worker.generation_finished, finished)
    reconnect_last(worker.generation_failed, failed)
    reconnect_last(worker.generation_paused, ctl._on_paused)
    if new_design:
        ctl.state_changed.disconnect(screen._on_state)
        ctl.state_changed.connect(screen._on_state)
        reconnect_last(ctl.generation_finished, screen._on_finished)
        reconnect_last(ctl.generation_failed, screen._on_failed)


def test_a_branch_asked_mid_reply_starts_whatever_the_slot_order(qtbot, win) -> None:
    reverse_slot_order(win)
    win.step_mode.action.setChecked(True)
    win.input.setPlainText(PROMPT)
    for _ in range(3):
        click_next(qtbot, win)
    turn = win.session.reply
    step = turn.steps[1]
    other = next(t.token_id for t in step.top if t.token_id != step.token_id)
    ended: list = []
    win.reply_finished.connect(ended.append)
    win.chat_screen.branch_from(turn, 1, other)  # a reply is paused: it stops first
    qtbot.waitUntil(lambda: len(ended) == 2, timeout=60_000)
    assert ended[0]["stop_reason"] == "cancelled" and "error" not in ended[1]
    branch = win.session.turns[-1]
    assert branch is not turn and branch.steps[1].token_id == other
    assert win.controller.state is S.IDLE
