"""Render resources/icons/loopchat.svg to the PNG and ICO files the executable and the desktop
entry use (run by scripts/build_exe.sh; Qt renders offscreen, no display needed)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"


def render(size: int) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    QSvgRenderer(str(ICONS / "loopchat.svg")).render(painter)
    painter.end()
    return image


def main() -> int:
    app = QGuiApplication(sys.argv[:1])  # noqa: F841 - Qt needs an application for painting
    render(256).save(str(ICONS / "loopchat.png"))
    render(256).save(str(ICONS / "loopchat.ico"))
    print(f"rendered icons into {ICONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
