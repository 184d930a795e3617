"""Token ids the loaded model has no row for are refused with one clear message, never an
IndexError: a conversation saved with one model and opened with another keeps the first one's
reply ids, and the attention view asks the inspector about them.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from desktop.inspect_jobs import AttentionJob
from engine.errors import EngineError
from engine.front_door import Engine
from engine.loading.loader import load_model
from tests.fixtures.models import VOCAB
from tests.window_helpers import ask, greedy, load, make_window

ROOT = Path(__file__).resolve().parents[1]
PROMPT = ({"role": "user", "content": "What is a loop"},)


@pytest.mark.parametrize("command", ["inspect", "generate"])
@pytest.mark.parametrize("ids", ["99999", "1,-4"])
def test_cli_refuses_ids_outside_the_vocabulary(tiny_hf_dir: Path, command: str, ids: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", command, "--model", str(tiny_hf_dir)]
        + [f"--prompt-ids={ids}", "--dtype", "float32", "--device", "cpu", "--json"],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "outside the vocabulary" in lines[0], stderr
    assert not proc.stdout


@pytest.mark.parametrize(
    ("reply", "index"),
    [
        ((5, VOCAB + 10), 1),  # the selected token itself is not in this model
        ((VOCAB + 10, 5), 0),
        ((VOCAB + 10, 5), 1),  # one before it, in the context
        ((5, -1), 1),
    ],
)
def test_attention_job_refuses_a_reply_from_another_model(
    tiny_hf_dir: Path, reply: tuple[int, ...], index: int
) -> None:
    loaded = load_model(tiny_hf_dir, dtype="float32", device="cpu")
    with pytest.raises(EngineError, match="vocabulary") as caught:
        AttentionJob(PROMPT, reply, index).run(Engine(loaded))
    message = str(caught.value)
    assert "\n" not in message and "another model" in message, message


def test_attention_job_names_rows_the_tokenizer_lacks(tmp_path: Path, tokenizer_path: Path) -> None:
    """A padded vocabulary (more output rows than tokenizer pieces): those ids are the model's
    own, so they are inspected, and shown by number rather than raising in the tokenizer."""
    from tests.fixtures.models import random_llama, write_hf

    folder = write_hf(
        random_llama(kv_heads=2, seed=7, vocab=VOCAB + 64), tmp_path / "hf", tokenizer_path, False
    )
    loaded = load_model(folder, dtype="float32", device="cpu")
    padded = VOCAB + 3
    result = AttentionJob(PROMPT, (5, padded, 7), 2).run(Engine(loaded))
    assert result.texts[-1] == f"<{padded}>"
    assert AttentionJob(PROMPT, (5, padded), 1).run(Engine(loaded)).token_text == f"<{padded}>"


def test_window_shows_a_message_for_a_reply_of_another_model(
    qtbot, home: Path, tiny_model_dir: Path
) -> None:
    win = make_window(qtbot, home)
    load(qtbot, win, tiny_model_dir)
    greedy(win, 6)
    win.sampling.system_prompt.setPlainText("")
    ask(qtbot, win, "What is a loop")
    reply = win.chat.messages[-1]
    # As a conversation saved with a larger model reads back: ids this one has no row for.
    reply.steps[:] = [replace(step, token_id=VOCAB + 100) for step in reply.steps]
    win.attention.action.setChecked(True)
    view = win.attention.view
    for index in (0, len(reply.steps) - 1):  # the first token's context is the prompt alone
        view.title.setText("")
        assert win.attention.select(reply, index) is not None
        qtbot.waitUntil(lambda: "Could not compute" in view.title.text(), timeout=60_000)
        title = view.title.text()
        assert "another model" in title and "Unexpected error" not in title, title
    # The window goes on: the next question is answered with the same model.
    ask(qtbot, win, "Hello")
    win.close()
