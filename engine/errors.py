"""The one exception type the engine raises for problems a user can fix, and its structured hint.

Its message is written for a dialog or a terminal line: it names the file or setting at fault and
says what to do, so callers never have to show a traceback.

What to do often depends on where the user is: the CLI says `python -m engine download X` or
`--token`, the window says "Models → Choose or download a model…" or "the Token field". So an
error that ends in such advice carries it as data, a `Hint` (a `Remedy` and the facts it needs),
beside the problem itself. `str(error)` is the CLI's wording (the table below); the app words the
same hint its own way (desktop/app_text.py), so a word changed here cannot break the window's text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Remedy(Enum):
    """What the user can do about a problem, named without any front end's words."""

    DOWNLOAD = "download"
    """The model {repo_id} is not on disk: download it (or pick a folder)."""
    FINISH_DOWNLOAD = "finish_download"
    """The download of {repo_id} is incomplete: download it again to finish it."""
    LOG_IN = "log_in"
    """A gated repo: accept its licence at {page}, then give an access token."""
    TOKEN_IF_PRIVATE = "token_if_private"
    """No such repo, or a private one: give an access token if it is private."""
    NEW_TOKEN = "new_token"
    """The Hub rejected the token: create a read token at {tokens_page} and give it."""
    RETYPE_TOKEN = "retype_token"
    """The token the user gave is malformed ({flaw}): copy it again from {tokens_page}."""
    CHECK_REVISION = "check_revision"
    """The repo has no such revision: check it (a branch, tag or commit of the repo)."""
    FIX_REVISION_NAME = "fix_revision_name"
    """The revision cannot be a branch, tag or commit name: check it."""
    GIVE_REVISION = "give_revision"
    """The revision is empty: give a branch, tag or commit."""
    SMALLER_CONTEXT = "smaller_context"
    """The context asked for does not fit in memory (about {fits} tokens would)."""
    LESS_MEMORY = "less_memory"
    """Allocating the KV cache failed: a smaller context or model (or dtype) needs less."""
    MORE_CONTEXT = "more_context"
    """A note, not an error: the context was capped by default; more may be asked for."""


@dataclass(frozen=True)
class Hint:
    """A remedy and the facts its wording needs (a repo id, a URL, a token count)."""

    remedy: Remedy
    facts: dict[str, Any] = field(default_factory=dict, hash=False)


CLI_ADVICE: dict[Remedy, str] = {
    Remedy.DOWNLOAD: (
        "{problem}; download it with `python -m engine download {repo_id}` or pick a folder"
    ),
    Remedy.FINISH_DOWNLOAD: "{problem}; finish it with `python -m engine download {repo_id}`",
    Remedy.LOG_IN: (
        "{problem}: accept its licence at {page} while logged in, then give an access token with "
        "--token or log in with `hf auth login` (`huggingface-cli login`)"
    ),
    Remedy.TOKEN_IF_PRIVATE: "{problem}; if it is private, give an access token with --token",
    Remedy.NEW_TOKEN: (
        "{problem}: create a read token at {tokens_page} and give it with --token or "
        "`hf auth login`"
    ),
    Remedy.RETYPE_TOKEN: (
        "the token given with --token {flaw}, so it is not a Hugging Face access token; copy it "
        "again from {tokens_page}"
    ),
    Remedy.CHECK_REVISION: "{problem}; check --revision (a branch, tag or commit of the repo)",
    Remedy.FIX_REVISION_NAME: "{problem}; check --revision",
    Remedy.GIVE_REVISION: "--revision is empty; give a branch, tag or commit of the repo",
    Remedy.SMALLER_CONTEXT: (
        "{problem}; use a smaller --max-context (about {fits} fits) or close other programs"
    ),
    Remedy.LESS_MEMORY: "{problem}; use a smaller --max-context or dtype",
    Remedy.MORE_CONTEXT: "{problem}; use --max-context for more",
}
"""The CLI's words for each remedy: `{problem}` and the hint's facts are filled in."""


def cli_text(problem: str, hint: Hint | None) -> str:
    """The problem with the CLI's advice for its hint (the problem alone when there is none)."""
    if hint is None:
        return problem
    return CLI_ADVICE[hint.remedy].format(problem=problem, **hint.facts)


class EngineError(Exception):
    """A user-facing error: bad model folder, bad arguments, context overflow, offline download.

    `EngineError(problem)` is a complete message. `EngineError(problem, Remedy.X, fact=...)` adds
    what to do as data: `str(error)` words it for the CLI, `problem` and `hint` let another front
    end word it itself.
    """

    def __init__(self, problem: str, remedy: Remedy | None = None, **facts: Any) -> None:
        self.problem = problem
        """What went wrong, without any front end's advice."""
        self.hint = Hint(remedy, dict(facts)) if remedy is not None else None
        """What to do about it, or None when `problem` already says all there is."""
        super().__init__(cli_text(problem, self.hint))

    def __reduce__(self) -> tuple:
        """Pickles (e.g. across processes) with its hint, not as the CLI's text alone."""
        remedy = self.hint.remedy if self.hint else None
        facts = self.hint.facts if self.hint else {}
        return (_rebuild, (type(self), self.problem, remedy, facts))


def _rebuild(cls: type[EngineError], problem: str, remedy: Remedy | None, facts: dict) -> Any:
    return cls(problem, remedy, **facts)
