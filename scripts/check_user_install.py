"""Prove the README's own install, as a new user gets it: no test extras, no numpy, no compiler at
run time. Run by .ci/run; also by hand: `python3 scripts/check_user_install.py`.

What it does:
1. copies the project's files (what git tracks, plus untracked files it does not ignore) into an
   empty folder, so nothing built or installed in this checkout helps;
2. runs the README's "Install and launch the app" command there, exactly as written, except that
   the final launch (`&& .venv/bin/loopchat`) is left off: a window would wait for a user;
3. checks what a user would do first: 8- and 4-bit generation from the CLI and the app's
   `--self-test` in 16, 8 and 4 bits, with a PATH that holds no C compiler.
Exit 0 when every check passes; otherwise the failing command's output and exit 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_commands import readme_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = " && .venv/bin/loopchat"


def readme_install_command() -> str:
    """The README's "Install and launch the app" command without the launch."""
    command = readme_command("app")
    if not command.endswith(LAUNCH):
        raise SystemExit(f"the README's install command does not end with {LAUNCH!r}: {command}")
    return command[: -len(LAUNCH)]


def copy_project(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (target / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / os.fsdecode(name))


def run(command: list[str] | str, cwd: Path, env: dict[str, str], shell: bool = False) -> str:
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=1800
    )
    shown = command if isinstance(command, str) else " ".join(command)
    print(f"[{time.monotonic() - started:6.1f} s] {shown}", flush=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"failed (exit {done.returncode}): {shown}")
    return done.stdout


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="loopchat-user-") as tmp:
        project = Path(tmp) / "loopchat"
        copy_project(project)
        home = Path(tmp) / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        env.update(LOOPCHAT_HOME=str(home), QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1")
        env["HF_HOME"] = str(Path(tmp) / "hf")
        run(readme_install_command(), project, env, shell=True)

        python = project / ".venv" / "bin" / "python"
        probe = "import importlib.util as u; print(u.find_spec('numpy') is None)"
        if run([str(python), "-c", probe], project, env).strip() != "True":
            raise SystemExit("numpy is installed by the README's command: the check proves nothing")

        no_compiler = Path(tmp) / "bin"
        no_compiler.mkdir()
        user = dict(env, PATH=str(no_compiler))
        for quant in ("int8", "int4"):
            out = run(
                [str(python), "-m", "engine", "generate", "--model", "builtin", "--quant", quant,
                 "--prompt", 'What does "serene" mean?', "--chat", "--temperature", "0",
                 "--max-new-tokens", "12", "--json"],
                project, user,
            )  # fmt: skip
            done = last_json(out)
            assert done["done"] and done["generated_tokens"] >= 1, done
            print(f"    generate --quant {quant}: kernel {done['kernel']}, build {done['native']}")
        for quant in ("none", "int8", "int4"):
            loopchat = project / ".venv" / "bin" / "loopchat"
            out = run([str(loopchat), "--self-test", "builtin", "--quant", quant], project, user)
            done = last_json(out)
            assert done["done"] and done["generated_tokens"] >= 1, done
            print(f"    self-test --quant {quant}: kernel {done['kernel']}, build {done['native']}")
            if quant != "none" and sys.platform != "win32" and done["native"] is None:
                raise SystemExit("the compiled kernels did not run: the install did not build them")
    print("the README's install works")
    return 0


if __name__ == "__main__":
    sys.exit(main())
