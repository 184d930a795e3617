#!/usr/bin/env bash
# Build the one-folder executable dist/loopchat/loopchat from build.spec.
# Uses ./.venv (created if missing) with the project and its `build` extra installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet torch==2.13.0
fi
.venv/bin/python -m pip install --quiet -e ".[build]"
.venv/bin/python scripts/render_icons.py
.venv/bin/pyinstaller --noconfirm --clean --log-level WARN \
    --distpath "${DIST:-dist}" --workpath "${WORK:-build}" build.spec
du -sh "${DIST:-dist}/loopchat"
echo "built ${DIST:-dist}/loopchat/loopchat"
