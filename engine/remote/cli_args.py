"""The CLI's `--server URL --model NAME [--api-key-env VAR]` (generate and inspect): the
arguments and the opening of the remote model, kept apart from engine/cli.py's local paths.

The key is read from an environment variable, never from a flag (a flag lands in the shell's
history and in `ps`): `LOOPCHAT_API_KEY` by default, or the variable `--api-key-env` names.
"""

from __future__ import annotations

import argparse
import os
import re

from engine.errors import EngineError

DEFAULT_KEY_ENV = "LOOPCHAT_API_KEY"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOCAL_ONLY = (
    ("draft", "--draft (a server decodes with its own settings)"),
    ("max_context", "--max-context (the server's context is its own)"),
)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="an OpenAI-compatible server's base URL (e.g. http://localhost:8000/v1); "
        "--model then names one of its models",
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help=f"the environment variable holding the server's API key (default: "
        f"{DEFAULT_KEY_ENV} if set)",
    )


def api_key(ns: argparse.Namespace) -> str | None:
    """The key from the environment; EngineError if a named variable is missing (never shows
    the value)."""
    name = ns.api_key_env
    if name is None:
        return os.environ.get(DEFAULT_KEY_ENV) or None
    if not ENV_NAME.match(name):
        raise EngineError(f"--api-key-env must name an environment variable, got {name!r}")
    value = os.environ.get(name)
    if not value:
        raise EngineError(f"--api-key-env names {name}, but that environment variable is not set")
    return value


def open_remote(ns: argparse.Namespace):
    """The RemoteEngine that `--server` and `--model` name; EngineError for local-only flags."""
    from engine.remote import RemoteEngine

    for attr, flag in LOCAL_ONLY:
        if getattr(ns, attr, None) is not None:
            raise EngineError(f"{flag} does not apply with --server")
    if getattr(ns, "prompt_ids", None) is not None:
        raise EngineError(
            "--prompt-ids does not apply with --server: a server takes text (use --prompt or "
            "--prompt-file)"
        )
    return RemoteEngine.open(ns.server, ns.model, api_key=api_key(ns))
