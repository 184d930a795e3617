#!/usr/bin/env bash
# Build the one-folder executable dist/loopchat/loopchat from build.spec. Runs from any folder.
#
# Python: $PYTHON if set (a venv's python), else ./.venv/bin/python, which is created if missing
# (CPU torch first, so pip does not fetch a CUDA build). The project and its `build` extra
# (PyInstaller) are installed into it. Output folders: $DIST (default dist), $WORK (default build).
# On Windows, run the same steps by hand in a venv:
#   pip install -e .[build] && pyinstaller --noconfirm --clean build.spec
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIST="${DIST:-dist}"
WORK="${WORK:-build}"
PYTHON="${PYTHON:-.venv/bin/python}"

if [ ! -x "$PYTHON" ]; then
    python3 -m venv .venv
    PYTHON=.venv/bin/python
    "$PYTHON" -m pip install --quiet --upgrade pip
    "$PYTHON" -m pip install --quiet torch==2.13.0
fi
"$PYTHON" -m pip install --quiet -e ".[build]"

# The bitmap icons are committed; redraw them only when the SVG changed.
if [ resources/icons/loopchat.svg -nt resources/icons/loopchat.png ]; then
    "$PYTHON" scripts/render_icons.py
fi

start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" build.spec
echo "built $DIST/loopchat/loopchat in $(( $(date +%s) - start )) s," \
    "$(du -sh "$DIST/loopchat" | cut -f1) on disk"
echo "check it: QT_QPA_PLATFORM=offscreen $DIST/loopchat/loopchat --self-test MODEL_FOLDER"
