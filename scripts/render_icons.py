"""Render resources/icons/loopchat.svg into the bitmap icons the platforms want.

Writes loopchat.png (256 px, the window/desktop icon and the one the Linux build uses),
loopchat-128/64/48.png (hicolor theme sizes for the `.desktop` entry) and loopchat.ico (Windows:
16-256 px in one file, PNG-compressed entries, which Windows Vista and later read). The outputs are
committed, so a build does not need this; scripts/build_exe.sh reruns it only when the SVG is newer.
Qt renders offscreen: no display needed.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"
PNG_SIZES = (128, 64, 48)  # plus loopchat.png at 256
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)


def render(renderer: QSvgRenderer, size: int) -> QImage:
    """The SVG drawn at size x size px, antialiased on a transparent background."""
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    return image.convertToFormat(QImage.Format.Format_ARGB32)


def png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data.data())


def ico_bytes(images: list[tuple[int, bytes]]) -> bytes:
    """An ICO file holding several sizes (Qt's own ICO writer stores only one image).

    Layout: ICONDIR (reserved, type 1, count), one 16-byte ICONDIRENTRY per image, then the
    images; a width/height byte of 0 means 256.
    """
    header = struct.pack("<HHH", 0, 1, len(images))
    offset = len(header) + 16 * len(images)
    entries, blobs = [], []
    for size, blob in images:
        side = 0 if size >= 256 else size
        entries.append(struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(blob), offset))
        blobs.append(blob)
        offset += len(blob)
    return header + b"".join(entries) + b"".join(blobs)


def main() -> int:
    app = QGuiApplication(sys.argv[:1])  # noqa: F841 - painting needs an application object
    renderer = QSvgRenderer(str(ICONS / "loopchat.svg"))
    if not renderer.isValid():
        sys.stderr.write(f"cannot read {ICONS / 'loopchat.svg'}\n")
        return 1
    (ICONS / "loopchat.png").write_bytes(png_bytes(render(renderer, 256)))
    for size in PNG_SIZES:
        (ICONS / f"loopchat-{size}.png").write_bytes(png_bytes(render(renderer, size)))
    ico = ico_bytes([(size, png_bytes(render(renderer, size))) for size in ICO_SIZES])
    (ICONS / "loopchat.ico").write_bytes(ico)
    print(f"rendered icons into {ICONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
