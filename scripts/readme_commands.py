"""The README's two set-up commands, read from README.md so that CI runs exactly what it says.

`python3 scripts/readme_commands.py app|test` prints one; .ci/run runs the test command and
scripts/check_user_install.py the app command (without its final launch).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
HEADINGS = {"app": "Install and launch the app:", "test": "Install and run the tests:"}


def readme_command(kind: str) -> str:
    """The shell block right after the README's line for `kind` ("app" or "test")."""
    text = README.read_text(encoding="utf-8")
    found = re.search(re.escape(HEADINGS[kind]) + r"\s*```sh\n(.+?)\n```", text, re.DOTALL)
    if not found:
        raise SystemExit(f"README.md has no {HEADINGS[kind]!r} command block")
    return found.group(1).strip()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in HEADINGS:
        raise SystemExit("usage: readme_commands.py app|test")
    print(readme_command(sys.argv[1]))
