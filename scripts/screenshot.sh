#!/usr/bin/env bash
# Take docs/screenshot.png: run the real app under Xvfb with a model, send a prompt, capture the
# window mid-generation. Needs Debian's xvfb, xdotool and imagemagick (see README).
#   scripts/screenshot.sh MODEL_DIR [OUT.png] [dark]      (PROMPT=... overrides the question)
set -euo pipefail
model=${1:?model folder}
out=${2:-docs/screenshot.png}
theme=${3:-light}
cd "$(dirname "$0")/.."
export DISPLAY=:99
Xvfb :99 -screen 0 1280x820x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
sleep 1
export LOOPCHAT_HOME=$(mktemp -d)
export QT_QPA_PLATFORM=xcb
if [ "$theme" = dark ]; then export LOOPCHAT_THEME=dark; fi
${APP_CMD:-.venv/bin/python -m desktop} --model "$model" &
app=$!
for _ in $(seq 1 120); do
    win=$(xdotool search --name "Loopchat —" 2>/dev/null | head -1 || true)
    [ -n "$win" ] && break
    sleep 0.5
done
xdotool windowsize "$win" 1260 800 windowmove "$win" 10 10
sleep 1
xdotool windowactivate --sync "$win" 2>/dev/null || true
xdotool type --delay 20 "${PROMPT:-Explain attention as a loop over earlier tokens, with an example.}"
xdotool key Return
sleep "${SHOT_DELAY:-6}"
import -window root "$out"
echo "saved $out"
