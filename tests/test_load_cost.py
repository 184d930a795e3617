"""Loading a model must not drag in heavy parts of torch the engine never uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loading_does_not_import_torch_dynamo(tiny_model_dir: Path) -> None:
    # torch._dynamo takes 1-1.5 s to import and holds the GIL meanwhile, which froze the window
    # on the first model load; a fresh process shows whether anything on the load path pulls it.
    code = (
        "import sys\n"
        "from engine.loading.loader import load_model\n"
        f"load_model({str(tiny_model_dir)!r}, dtype='float32', device='cpu')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == "False"
