"""One prompt builder and one context fitter (engine/text/prompt.py, behind `Engine`), and one
choice of the turns the model reads (`ChatSession.model_turns`): the chat, the surprisal tint
and the attention view all go through them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QWidget

from desktop.inspect_jobs import SurprisalJob
from desktop.session import ChatSession
from desktop.turns import ASSISTANT, USER, Turn
from desktop.views.surprisal import SurprisalTint
from engine.errors import EngineError
from engine.front_door import Engine, WindowPlan
from engine.loading.loader import load_model
from engine.text.chat import Message, chat_prompt_ids
from engine.text.prompt import fit_prompt, plan_windows


def counted(messages) -> list[int]:
    """A stand-in prompt builder: one id per character, plus one per message."""
    return [0] * sum(len(m.content) + 1 for m in messages)


def conversation(system: str, *turns: str) -> list[Message]:
    head = [Message("system", system)] if system else []
    roles = ("user", "assistant")
    return head + [Message(roles[i % 2], text) for i, text in enumerate(turns)]


def test_fit_prompt_drops_the_oldest_pairs_and_keeps_the_system_prompt() -> None:
    messages = conversation("sys", "a" * 9, "b" * 9, "c" * 9, "d" * 9, "e" * 9)
    whole = len(counted(messages))  # 4 + 5 * 10
    assert fit_prompt(counted, messages, whole + 10, 10).dropped == 0
    plan = fit_prompt(counted, messages, whole + 9, 10)
    assert plan.dropped == 2 and len(plan.ids) == whole - 20
    # The reply's room is at most half the context.
    assert fit_prompt(counted, messages, 2 * whole, 10**6).dropped == 0
    with pytest.raises(EngineError, match="context holds 20"):
        fit_prompt(counted, conversation("", "x" * 30), 20, 4)


def test_plan_windows_scores_each_message_once_in_a_window_that_fits() -> None:
    messages = conversation("sys", *(ch * 9 for ch in "abcdefghij"))
    limit = 44  # the system prompt (4) and four turns (10 each)
    plan = plan_windows(counted, messages, limit)
    assert len(plan.windows) > 1 and plan.too_long == []
    scored = [i for _start, first, end in plan.windows for i in range(first, end)]
    assert scored == list(range(1, len(messages)))
    for start, _first, end in plan.windows:
        assert (start - 1) % 2 == 0  # a window starts at a user turn
        assert len(counted(messages[:1] + messages[start:end])) <= limit
    # Short enough: one pass over everything.
    assert plan_windows(counted, messages, 1000).windows == [(1, 1, len(messages))]


def test_plan_windows_names_a_message_longer_than_the_context() -> None:
    messages = conversation("", "hi", "x" * 100, "again", "ok")
    plan = plan_windows(counted, messages, 40)
    assert plan.too_long == [1]
    assert [i for _s, first, end in plan.windows for i in range(first, end)] == [0, 2, 3]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(load_model(tiny_model_dir, dtype="float32", device="cpu"))


def test_the_front_door_binds_the_builder_and_fitters_to_the_model(engine: Engine) -> None:
    loaded = engine._loaded
    messages = conversation("Be brief.", "Hello there", "the loop attends", "Why?")
    assert engine.conversation_ids(messages) == chat_prompt_ids(
        loaded.tokenizer, messages, loaded.chat_template
    )
    plan = engine.fit_prompt(messages, reserve=8)
    assert plan.dropped == 0 and plan.ids == engine.conversation_ids(messages)
    limit = engine.max_context
    assert engine.plan_windows(messages) == plan_windows(engine.conversation_ids, messages, limit)
    assert engine.plan_windows(messages).windows == [(1, 1, 4)]


class PlannedEngine:
    """The front door with a window plan of the test's choosing, to see who plans the job."""

    def __init__(self, engine: Engine, plan: WindowPlan) -> None:
        self._engine, self._plan, self.asked = engine, plan, []

    def plan_windows(self, messages):
        self.asked.append(list(messages))
        return self._plan

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_the_surprisal_job_reads_the_windows_the_front_door_plans(engine: Engine) -> None:
    messages = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "the loop attends"},
        {"role": "user", "content": "Why?"},
    )
    # Two passes where one would fit: the job must follow the plan it is given.
    plan = WindowPlan(windows=[(1, 1, 2), (1, 2, 4)])
    planned = PlannedEngine(engine, plan)
    result = SurprisalJob(messages, top=2).run(planned)
    assert planned.asked == [[Message(m["role"], m["content"]) for m in messages]]
    assert result.windows == 2 and result.window_starts == (0, 1, 1, 1)
    assert all(tokens is not None for tokens in result.tokens[1:])
    # Unplanned, it is the front door's own plan: one pass here.
    assert SurprisalJob(messages, top=2).run(engine).windows == 1


def session_with(*turns: tuple[str, str], system: str = "Be brief.") -> ChatSession:
    session = ChatSession(None, None, system_prompt=system)  # type: ignore[arg-type]
    session.turns = [Turn(role, text, i, i + 1) for i, (role, text) in enumerate(turns)]
    return session


def test_the_prompt_leaves_out_unanswered_and_damaged_turns() -> None:
    session = session_with(
        (USER, "stopped early"),
        (USER, "first"),
        (ASSISTANT, "one"),
        (ASSISTANT, "orphan"),
        (USER, "last"),
    )
    session.turns.insert(2, Turn(ASSISTANT, "unreadable", 9, 10, damaged=True))
    kept = session.model_turns()
    assert [t.content for t in kept] == ["first", "one", "last"]
    assert session.prompt_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": USER, "content": "first"},
        {"role": ASSISTANT, "content": "one"},
        {"role": USER, "content": "last"},
    ]
    assert session.prompt_messages(kept[:1]) == session.prompt_messages()[:2]


class FakeController(QObject):
    class Worker(QObject):
        inspected = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.worker = self.Worker()
        self.jobs: list = []

    def inspect(self, job) -> int:
        self.jobs.append(job)
        return len(self.jobs)


class OpenChat:
    def __init__(self, session: ChatSession) -> None:
        self.session, self.model_info, self.conversation_id = session, object(), None

    def show_error(self, message: str, kind: str = "error") -> None:
        raise AssertionError(message)


def test_the_surprisal_tint_scores_what_the_chat_sends(qtbot) -> None:
    session = session_with((USER, "stopped"), (USER, "hi"), (ASSISTANT, "hello"), (USER, "why"))
    window = QWidget()
    qtbot.addWidget(window)
    controller = FakeController()
    tint = SurprisalTint(OpenChat(session), controller, None, window)  # type: ignore[arg-type]
    tint.action.setChecked(True)
    (job,) = controller.jobs
    assert list(job.messages) == session.prompt_messages()
