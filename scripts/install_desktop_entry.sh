#!/usr/bin/env bash
# Add Loopchat to the Linux application menu for this user: installs resources/loopchat.desktop
# and the icons under ${XDG_DATA_HOME:-~/.local/share}. Runs from any folder.
#   scripts/install_desktop_entry.sh                 # menu entry runs `loopchat` (pip install)
#   scripts/install_desktop_entry.sh "$PWD/dist/loopchat/loopchat"   # ... or the built executable
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command=${1:-loopchat}
data="${XDG_DATA_HOME:-$HOME/.local/share}"
icons="$data/icons/hicolor"

for size in 48 64 128; do
    install -Dm644 "resources/icons/loopchat-$size.png" "$icons/${size}x${size}/apps/loopchat.png"
done
install -Dm644 resources/icons/loopchat.png "$icons/256x256/apps/loopchat.png"
install -Dm644 resources/icons/loopchat.svg "$icons/scalable/apps/loopchat.svg"

mkdir -p "$data/applications"
# Exec takes a path with spaces only when quoted (Desktop Entry spec).
quoted=$command
case "$command" in *" "*) quoted="\"$command\"" ;; esac
sed "s|^Exec=.*|Exec=$quoted|" resources/loopchat.desktop > "$data/applications/loopchat.desktop"

command -v update-desktop-database >/dev/null && update-desktop-database -q "$data/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$icons" || true
echo "installed $data/applications/loopchat.desktop (Exec=$quoted) and icons in $icons"
