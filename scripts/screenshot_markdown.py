"""Take docs/screenshot-markdown-{light,dark}.png: a stored reply with a code block, inline
`<tags>` and a link, as the real window renders it (imported JSON, offscreen, no model needed).

    QT_QPA_PLATFORM=offscreen python scripts/screenshot_markdown.py [OUT_DIR]

The test model writes word salad, so the reply is imported rather than generated.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("screenshot")

REPLY = """\
In Java, a `List<String>` holds strings; in C++ it is `std::vector<std::string>` from the \
`#include <vector>` header. Raw HTML such as <b>this</b> or <img src="file:///etc/passwd"> is \
shown as typed, never interpreted:

```cpp
#include <iostream>
#include <string>
#include <vector>

int main() {
    std::vector<std::string> names{"Ada", "Grace", "Linus"};
    for (const auto& name : names) std::cout << name << '\\n';
}
```

Links ask before they open, and only http(s) ones: see \
[cppreference: std::vector](https://en.cppreference.com/w/cpp/container/vector).
"""

CONVERSATION = {
    "format": "loopchat-conversation",
    "version": 1,
    "title": "A list of strings in Java and C++",
    "model": "Llama-2-7b-chat",
    "created_at": 1_764_480_000,
    "messages": [
        {"role": "user", "content": "How do I keep a list of strings in Java and in C++?"},
        {
            "role": "assistant",
            "content": REPLY,
            "stop_reason": "eos",
            "timings": {"generated_tokens": 142, "decode_tokens_per_s": 23.4},
        },
    ],
}


def shoot(theme: str, out: Path) -> None:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from desktop.main_window import MainWindow
    from desktop.theme import apply_theme

    app = QApplication.instance() or QApplication([])
    apply_theme(app, theme)
    home = Path(tempfile.mkdtemp())
    os.environ["LOOPCHAT_HOME"] = str(home)
    settings = QSettings(str(home / "loopchat.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1260, 800)
    window.show()
    conv = window.store.import_json(CONVERSATION)
    window.conversations.open_requested.emit(conv)
    for _ in range(100):
        app.processEvents()
    window.grab().save(str(out))
    log.info("saved %s", out)
    window.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")
    for theme in ("light", "dark"):
        shoot(theme, out_dir / f"screenshot-markdown-{theme}.png")


if __name__ == "__main__":
    main()
