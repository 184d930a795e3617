"""The main window's menus and actions (File, Models, Chat, View, Help).

Kept apart from the window so the window is layout and wiring; the actions that tests drive
(`new_chat_action`, `stop_action`, `regenerate_action`, File → Import / Export … Markdown) are
set as attributes of the window under those names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QFileDialog, QMessageBox

if TYPE_CHECKING:
    from desktop.main_window import MainWindow

MAX_RECENT = 8


def _action(window: MainWindow, menu, text: str, slot, shortcut=None) -> QAction:
    action = QAction(text, window)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
    action.triggered.connect(slot)
    menu.addAction(action)
    return action


def build_menus(w: MainWindow) -> None:
    bar = w.menuBar()
    file_menu = bar.addMenu("&File")
    w.open_action = _action(
        w,
        file_menu,
        "&Open model folder…",
        lambda: choose_model_folder(w),
        QKeySequence.StandardKey.Open,
    )
    file_menu.addSeparator()
    w.new_chat_action = _action(w, file_menu, "&New chat", w.new_chat, "Ctrl+N")
    _action(w, file_menu, "&Import conversation…", lambda: choose_import(w))
    _action(
        w,
        file_menu,
        "&Export conversation as Markdown…",
        lambda: choose_export(w, w.conversation_id, "md"),
    )
    _action(
        w,
        file_menu,
        "Export conversation as &JSON…",
        lambda: choose_export(w, w.conversation_id, "json"),
    )
    file_menu.addSeparator()
    _action(w, file_menu, "&Quit", w.close, QKeySequence.StandardKey.Quit)

    models = bar.addMenu("&Models")
    _action(w, models, "&Choose or download a model…", w.show_model_chooser, "Ctrl+M")
    w.recent_menu = models.addMenu("&Recent models")
    _action(w, models, "&Unload model", w.unload_model)
    weights = models.addMenu("&Weights")
    w.weights_group = QActionGroup(w)
    w.weights_actions = {}
    for quant, text in WEIGHTS:
        action = QAction(text, w, checkable=True)
        action.triggered.connect(lambda _checked=False, q=quant: choose_weights(w, q))
        w.weights_group.addAction(action)
        weights.addAction(action)
        w.weights_actions[quant] = action
    w.weights_actions["none"].setChecked(True)

    chat = bar.addMenu("&Chat")
    w.stop_action = _action(w, chat, "&Stop generating", w.escape, Qt.Key.Key_Escape)
    w.addAction(w.stop_action)  # Esc works wherever the focus is
    w.regenerate_action = _action(w, chat, "&Regenerate last reply", w.regenerate, "Ctrl+R")
    chat.addSeparator()
    _action(w, chat, "Use this system prompt for &new chats", w.sampling.save_default_system_prompt)

    view = bar.addMenu("&View")
    for text, target, shortcut in (
        ("&Conversations", w.conversations, "Ctrl+Shift+L"),
        ("&Side panel", w.side, "Ctrl+B"),
    ):
        toggle = _action(w, view, text, lambda: None, shortcut)
        toggle.setCheckable(True)
        toggle.setChecked(True)
        toggle.toggled.connect(target.setVisible)

    theme_menu(w, view.addMenu("&Theme"))

    conversations_menu(w, chat)

    help_menu = bar.addMenu("&Help")
    _action(w, help_menu, "&Keyboard shortcuts", lambda: show_shortcuts(w), "F1")
    _action(w, help_menu, "&About Loopchat", lambda: about(w))
    refresh_recent(w)


def theme_menu(w: MainWindow, menu) -> None:
    """System / Light / Dark, checked as saved; choosing one applies it at once and keeps it."""
    from desktop.theme import THEMES, saved_theme

    group = QActionGroup(w)
    group.setExclusive(True)
    current = saved_theme(w.settings)
    w.theme_actions = {}
    for name in THEMES:
        action = QAction(name.capitalize(), w, checkable=True)
        action.setChecked(name == current)
        action.triggered.connect(lambda _=False, n=name: set_theme(w, n))
        group.addAction(action)
        menu.addAction(action)
        w.theme_actions[name] = action


def set_theme(w: MainWindow, name: str) -> None:
    from PySide6.QtWidgets import QApplication

    from desktop.theme import THEME_KEY, apply_theme

    w.settings.setValue(THEME_KEY, name)
    w.settings.sync()
    w.theme_actions[name].setChecked(True)
    app = QApplication.instance()
    if app is not None:
        apply_theme(app, name)


def recent_models(settings) -> list[str]:
    value = settings.value("models/recent", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or [])]


WEIGHTS = (
    ("none", "&16-bit (as the model ships)"),
    ("int8", "&8-bit (half the memory)"),
    ("int4", "&4-bit (a third of the memory, less exact)"),
)
"""The weight formats a model can be loaded in (engine/kernels/quant.py), remembered per model."""


WEIGHT_LABELS = {"none": "16-bit", "int8": "8-bit", "int4": "4-bit"}
"""How notices name each format (the menu's words, without the explanation)."""


def weights_setting(path: str) -> str:
    """The settings key holding the weight format remembered for the model at `path`."""
    # QSettings treats "/" as a group separator; keep each model one flat key.
    return "weights/" + re.sub(r"[^A-Za-z0-9._-]", "_", path.strip())


def weights_for(settings, path: str) -> str:
    """The weight format remembered for the model at `path` ("none" until one has loaded)."""
    value = str(settings.value(weights_setting(path), "none"))
    return value if value in dict(WEIGHTS) else "none"


def remember_weights(settings, path: str, quant: str) -> None:
    """Keep `quant` as the format the model at `path` opens in next time.

    Called only once a load in that format has succeeded (or to forget one that failed): a choice
    saved before loading would, if it failed, stop the model from opening at every start.
    "none" is the default, so it is stored by leaving no key at all.
    """
    if quant in dict(WEIGHTS) and quant != "none":
        settings.setValue(weights_setting(path), quant)
    else:
        settings.remove(weights_setting(path))


def choose_weights(w: MainWindow, quant: str) -> None:
    """Reload the open model with `quant` weights (the chat stays as it is).

    Nothing is saved here: the window remembers the format once the model has loaded in it, and
    falls back to 16-bit with a notice if it cannot (MainWindow._on_load_failed). While a load is
    under way the choice is refused: it would apply to the model being replaced.
    """
    refusal = weights_refusal(w)
    if refusal:
        show_weights(w, w.loaded_quant())
        w.show_error(refusal, "notice")
        return
    if quant != w.loaded_quant():
        w.load_model(w.current_model_path(), quant=quant)


def weights_refusal(w: MainWindow) -> str:
    """Why Models → Weights cannot reload a model now, in words that say what to do; "" if it
    can (a model is open and no load is under way)."""
    if w.model_loading():
        name = model_label(w.loading_model_path())
        return f"Still loading {name}: choose its weights once it is open."
    if w.current_model_path():
        return ""
    opening = "Models → Recent models or Models → Choose or download a model…"
    failed = w.failed_model_path()
    if failed:
        return (
            f"No model is open ({model_label(failed)} could not be opened). Open one with "
            f"{opening}, then choose how its weights are stored."
        )
    return f"No model is open. Open one with {opening}, then choose how its weights are stored."


def model_label(path: str) -> str:
    """A model's name for a notice when only its path is known (no ModelInfo yet)."""
    from engine.front_door import is_builtin

    if is_builtin(path):
        return "the built-in model"  # the window capitalises a sentence's first word
    return Path(path).name or path


def show_weights(w: MainWindow, quant: str) -> None:
    """Tick `quant`, the format of the model that is open ("none" when none is, or for a format
    the menu does not offer)."""
    w.weights_actions.get(quant, w.weights_actions["none"]).setChecked(True)


def remember_model(w: MainWindow, path: str) -> None:
    recent = [p for p in recent_models(w.settings) if p != path]
    w.settings.setValue("models/recent", [path, *recent][:MAX_RECENT])
    w.settings.setValue("models/last", path)
    refresh_recent(w)


def refresh_recent(w: MainWindow) -> None:
    w.recent_menu.clear()
    recent = recent_models(w.settings)
    for path in recent:
        action = w.recent_menu.addAction(path)
        action.triggered.connect(lambda _=False, p=path: w.load_model(p))
    w.recent_menu.setEnabled(bool(recent))


def conversations_menu(w: MainWindow, chat) -> None:
    """Search (Ctrl+F), rename (F2) and delete (Delete, in the list) the open conversation."""
    chat.addSeparator()
    lst = w.conversations
    w.search_action = _action(w, chat, "&Search conversations", lst.focus_search, "Ctrl+F")
    w.rename_action = _action(
        w, chat, "Re&name conversation…", lambda: lst.rename(w.conversation_id), "F2"
    )
    w.delete_action = QAction("&Delete conversation", w)
    w.delete_action.setShortcut(QKeySequence(Qt.Key.Key_Delete))
    # Only in the list: Delete in the message box deletes text, not a conversation.
    w.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
    w.delete_action.triggered.connect(lambda: lst.delete_current())
    lst.addAction(w.delete_action)
    chat.addAction(w.delete_action)


SHORTCUTS = (
    ("Enter", "Send the message"),
    ("Shift+Enter", "New line in the message"),
    ("Esc", "Stop generating, or cancel editing a message"),
    ("Ctrl+N", "New chat"),
    ("Ctrl+R", "Regenerate the last reply"),
    ("F10", "Next token (step mode: one token, and how it was chosen)"),
    ("F5", "Continue a reply paused in step mode"),
    ("Ctrl+Shift+T", "Step mode on or off"),
    ("Ctrl+F", "Search conversations"),
    ("F2", "Rename the open conversation"),
    ("Delete", "Delete the selected conversation (with Undo)"),
    ("Ctrl+M", "Choose or download a model"),
    ("Ctrl+O", "Open a model folder"),
    ("Ctrl+Shift+L", "Show or hide the conversations"),
    ("Ctrl+B", "Show or hide the side panel"),
    ("F1", "This list"),
)


def show_shortcuts(w: MainWindow) -> QMessageBox:
    rows = "".join(f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{v}</td></tr>" for k, v in SHORTCUTS)
    box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts", f"<table>{rows}</table>")
    box.setParent(w, box.windowFlags())
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()  # not modal-blocking: tests and users are never stuck in it
    w.shortcuts_box = box
    return box


def about(w: MainWindow) -> None:
    from desktop.version import app_version

    QMessageBox.about(
        w,
        "About Loopchat",
        f"<b>Loopchat {app_version()}</b><p>Llama 2 on your own computer, with loop attention "
        "you can watch at work.</p>",
    )


def choose_model_folder(w: MainWindow) -> None:
    folder = QFileDialog.getExistingDirectory(w, "Open a model folder (HF or Meta layout)")
    if folder:
        w.load_model(folder)


EXPORT_FILTERS = {"md": "Markdown (*.md)", "json": "JSON (*.json)"}
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


def export_file_name(title: str, fmt: str) -> str:
    """A file name for exporting a conversation: its title, made safe on every platform."""
    name = _UNSAFE.sub(" ", title)
    name = " ".join(name.split()).strip(" .")[:80].rstrip(" .")
    return f"{name or 'Conversation'}.{fmt}"


def with_extension(path: Path, fmt: str) -> Path:
    """`path` with the chosen format's extension (dialogs on Linux do not add it)."""
    return path if path.suffix.lower() == f".{fmt}" else path.with_name(f"{path.name}.{fmt}")


def choose_export(w: MainWindow, conversation_id: int | None, fmt: str) -> None:
    if conversation_id is None:
        w.show_error("There is no saved conversation to export yet.", kind="notice")
        return
    title = next((c.title for c in w.store.list_conversations() if c.id == conversation_id), "")
    folder = str(w.settings.value("export/folder", "") or Path.home())
    suggested = str(Path(folder) / export_file_name(title, fmt))
    path, _ = QFileDialog.getSaveFileName(w, "Export conversation", suggested, EXPORT_FILTERS[fmt])
    if path:
        target = with_extension(Path(path), fmt)
        w.settings.setValue("export/folder", str(target.parent))
        w.export_conversation(conversation_id, target, fmt)


def choose_import(w: MainWindow) -> None:
    path, _ = QFileDialog.getOpenFileName(w, "Import conversation", "", "JSON (*.json)")
    if path:
        w.import_conversation(Path(path))
