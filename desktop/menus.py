"""The main window's menus and actions (File, Models, Chat, View, Help), as one `Menus` object.

Features get the menu they add to by attribute (`menus.chat_menu`, `menus.view_menu`), never by
its label. The actions that tests drive (`new_chat_action`, `stop_action`, `regenerate_action`,
File → Import / Export … Markdown) keep those names; the window exposes the first three.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Protocol

from PySide6.QtCore import QObject, QSettings, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence, QShortcut
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMenu, QMenuBar, QMessageBox, QWidget

from desktop.app_text import NO_MODEL_YET
from desktop.library import ConversationLibrary
from desktop.model_loading import (
    GGUF_WEIGHTS,
    WEIGHTS,
    ModelLoading,
    is_gguf_path,
    quant_in_name,
    recent_label,
    recent_models,
)
from desktop.servers import ServerList, is_remote_path
from desktop.views.conversation_list import ConversationList
from desktop.views.sampling_panel import SamplingPanel


class MenuHost(Protocol):
    """What the menus' actions ask of the window."""

    conversations: ConversationList
    side: QWidget
    sampling: SamplingPanel

    @property
    def conversation_id(self) -> int | None: ...
    def new_chat(self) -> None: ...
    def escape(self) -> None: ...
    def regenerate(self, step: bool = False) -> None: ...
    def load_model(self, path: str, quant: str | None = None) -> None: ...
    def unload_model(self) -> None: ...
    def show_model_chooser(self) -> object: ...
    def show_servers(self) -> object: ...
    def show_error(self, message: str, kind: str = "error") -> None: ...
    def export_conversation(self, conversation_id: int, path: Path, fmt: str) -> None: ...
    def import_conversation(self, path: Path) -> int | None: ...


class Menus(QObject):
    """The menu bar of `window`: its menus and the actions features and tests use."""

    def __init__(
        self,
        window: QMainWindow,
        host: MenuHost,
        models: ModelLoading,
        library: ConversationLibrary,
        settings: QSettings,
        servers: ServerList | None = None,
    ) -> None:
        super().__init__(window)
        self.window, self.host, self.models, self.library = window, host, models, library
        self.settings = settings
        self.servers = servers
        """Names the models on servers in Recent models ("model · server")."""
        self.shortcuts_box: QMessageBox | None = None
        self.about_box: QMessageBox | None = None
        bar = window.menuBar()
        self.file_menu = bar.addMenu("&File")
        self._file_menu(host)
        self.models_menu = bar.addMenu("&Models")
        self._models_menu(host)
        self.chat_menu = bar.addMenu("&Chat")
        self.stop_action = self._action(
            self.chat_menu, "&Stop generating", host.escape, Qt.Key.Key_Escape
        )
        window.addAction(self.stop_action)  # Esc works wherever the focus is
        self.stop_action.setToolTip("Stop the reply being written, or cancel editing a message")
        self.regenerate_action = self._action(
            self.chat_menu, "&Regenerate last reply", host.regenerate, "Ctrl+R"
        )
        self._regenerate_refused = QShortcut(QKeySequence("Ctrl+R"), window)
        """Ctrl+R while Regenerate is disabled: says why instead of doing nothing silently.
        Enabled only while the action is not, so the two never compete for the key."""
        self._regenerate_refused.setEnabled(False)
        self._regenerate_refused.activated.connect(self.explain_regenerate)
        self.regenerate_action.changed.connect(
            lambda: self._regenerate_refused.setEnabled(not self.regenerate_action.isEnabled())
        )
        self.chat_menu.addSeparator()
        self._action(
            self.chat_menu,
            "Use this system prompt for &new chats",
            host.sampling.save_default_system_prompt,
        )
        self.view_menu = bar.addMenu("&View")
        for text, target, shortcut in (
            ("&Conversations", host.conversations, "Ctrl+Shift+L"),
            ("&Side panel", host.side, "Ctrl+B"),
        ):
            toggle = self._action(self.view_menu, text, lambda: None, shortcut)
            toggle.setCheckable(True)
            toggle.setChecked(True)
            toggle.toggled.connect(target.setVisible)
        self._theme_menu(self.view_menu.addMenu("&Theme"))
        self._conversations_menu(host.conversations)
        self.help_menu = bar.addMenu("&Help")
        self._action(self.help_menu, "&Keyboard shortcuts", self.show_shortcuts, "F1")
        self._action(self.help_menu, "&About Loopchat", self.about)
        self.refresh_recent()

    def _action(self, menu: QMenu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self.window)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _file_menu(self, host: MenuHost) -> None:
        menu = self.file_menu
        self.open_action = self._action(
            menu, "&Open model folder…", self.choose_model_folder, QKeySequence.StandardKey.Open
        )
        self.open_file_action = self._action(
            menu, "Open model &file…", self.choose_model_file, "Ctrl+Shift+O"
        )
        self.open_file_action.setToolTip("Open a GGUF model file (.gguf)")
        # Enabled exactly when opening a folder is (the window decides that, for both).
        self.open_action.changed.connect(
            lambda: self.open_file_action.setEnabled(self.open_action.isEnabled())
        )
        menu.addSeparator()
        self.new_chat_action = self._action(menu, "&New chat", host.new_chat, "Ctrl+N")
        self._action(menu, "&Import conversation…", self.choose_import)
        self._action(
            menu,
            "&Export conversation as Markdown…",
            lambda: self.choose_export(host.conversation_id, "md"),
        )
        self._action(
            menu,
            "Export conversation as &JSON…",
            lambda: self.choose_export(host.conversation_id, "json"),
        )
        menu.addSeparator()
        self.quit_action = self._action(menu, "&Quit", self.window.close)
        # The platform's Quit keys; some platforms (Windows, a bare X session) have none, and
        # the shortcuts list promised Ctrl+Q.
        quit_keys = QKeySequence.keyBindings(QKeySequence.StandardKey.Quit)
        self.quit_action.setShortcuts(quit_keys or [QKeySequence("Ctrl+Q")])

    def _models_menu(self, host: MenuHost) -> None:
        menu = self.models_menu
        self._action(menu, "&Choose or download a model…", host.show_model_chooser, "Ctrl+M")
        self.servers_action = self._action(menu, "&Servers…", host.show_servers)
        self.servers_action.setToolTip(
            "Add a server (vLLM, llama.cpp's server, Ollama…) whose models you can chat with"
        )
        self.recent_menu = menu.addMenu("&Recent models")
        self.recent_menu.setToolTipsVisible(True)  # each entry's full path
        self.recent_menu.aboutToShow.connect(self.refresh_recent)  # the tick follows the model
        self._action(menu, "&Unload model", host.unload_model)
        self.weights_menu = weights = menu.addMenu("&Weights")
        self.weights_group = QActionGroup(self.window)
        self.weights_actions: dict[str, QAction] = {}
        for quant, text in (("file", "As in the &file"), *WEIGHTS):
            action = QAction(text, self.window, checkable=True)
            action.triggered.connect(lambda _checked=False, q=quant: self.choose_weights(q))
            self.weights_group.addAction(action)
            weights.addAction(action)
            self.weights_actions[quant] = action
        weights.aboutToShow.connect(self.label_weights)  # the model being opened may be a file
        self.label_weights()
        self.weights_actions["none"].setChecked(True)

    def _theme_menu(self, menu: QMenu) -> None:
        """System / Light / Dark, checked as saved; choosing one applies it at once and keeps it."""
        from desktop.theme import THEMES, saved_theme

        group = QActionGroup(self.window)
        group.setExclusive(True)
        current = saved_theme(self.settings)
        self.theme_actions: dict[str, QAction] = {}
        for name in THEMES:
            action = QAction(name.capitalize(), self.window, checkable=True)
            action.setChecked(name == current)
            action.triggered.connect(lambda _=False, n=name: self.set_theme(n))
            group.addAction(action)
            menu.addAction(action)
            self.theme_actions[name] = action

    def _conversations_menu(self, lst: ConversationList) -> None:
        """Search (Ctrl+F), rename (F2) and delete (Delete, in the list) the open conversation."""
        chat = self.chat_menu
        chat.addSeparator()
        self.search_action = self._action(chat, "&Search conversations", lst.focus_search, "Ctrl+F")
        self.rename_action = self._action(
            chat, "Re&name conversation…", lambda: lst.rename(self.host.conversation_id), "F2"
        )
        self.delete_action = QAction("&Delete conversation", self.window)
        self.delete_action.setShortcut(QKeySequence(Qt.Key.Key_Delete))
        # Only in the list: Delete in the message box deletes text, not a conversation.
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.delete_action.triggered.connect(lambda: lst.delete_current())
        lst.addAction(self.delete_action)
        chat.addAction(self.delete_action)

    # -- what the actions do -----------------------------------------------------------------

    def set_theme(self, name: str) -> None:
        from PySide6.QtWidgets import QApplication

        from desktop.theme import THEME_KEY, apply_theme

        self.settings.setValue(THEME_KEY, name)
        self.settings.sync()
        self.theme_actions[name].setChecked(True)
        app = QApplication.instance()
        if app is not None:
            apply_theme(app, name)

    def choose_weights(self, quant: str) -> None:
        """Reload the open model with `quant` weights (the chat stays as it is).

        Nothing is saved here: the format is remembered once the model has loaded in it, and
        falls back to 16-bit with a notice if it cannot (desktop.model_loading). While a load is
        under way the choice is refused: it would apply to the model being replaced.
        """
        refusal = self.models.refusal()
        if refusal:
            self.show_weights(self.models.loaded_quant())
            self.host.show_error(refusal, "notice")
            return
        if quant != self.models.loaded_quant():
            self.host.load_model(self.models.current_path(), quant=quant)

    def show_weights(self, quant: str) -> None:
        """Tick `quant`, the format of the model that is open ("none" when none is, or for a
        format the menu does not offer)."""
        self.label_weights()
        action = self.weights_actions.get(quant)
        if action is None or not action.isVisible():
            action = self.weights_actions["none"]
        action.setChecked(True)

    def label_weights(self) -> None:
        """The formats the open (or loading) model offers: a GGUF file's own blocks ("As in the
        file (Q4_K_M)") or dequantized into the dtype; a folder's 16/8/4-bit."""
        path = self.models.current_path() or (
            self.models.loading_path() if self.models.in_progress else ""
        )
        gguf = is_gguf_path(path)
        # A model on a server has no weights here to choose a format for.
        self.weights_menu.setEnabled(not is_remote_path(path))
        for quant, action in self.weights_actions.items():
            action.setVisible(quant in GGUF_WEIGHTS if gguf else quant != "file")
        if not gguf:
            self.weights_actions["none"].setText(dict(WEIGHTS)["none"])
            return
        quant_name = self._file_quant(path)
        self.weights_actions["file"].setText(
            f"As in the &file ({quant_name})" if quant_name else "As in the &file"
        )
        self.weights_actions["none"].setText(f"&Dequantized ({self._dtype_name()})")

    def _file_quant(self, path: str) -> str:
        """The open GGUF file's quantization: as the loader reports it, else as its name says."""
        info = self.models.info
        if info is not None and self.models.current_path() == path:
            said = str(info.extra.get("file_format") or "")  # "GGUF Q4_K_M"
            if said.startswith("GGUF ") and said != "GGUF unknown":
                return said.removeprefix("GGUF ")
        return quant_in_name(path)

    def _dtype_name(self) -> str:
        """The dtype a dequantized file's weights take: the open model's, else the setting's."""
        info = self.models.info
        if info is not None and info.dtype:
            return str(info.dtype).removeprefix("torch.")
        dtype = str(self.settings.value("engine/dtype", "auto"))
        return "the model's dtype" if dtype == "auto" else dtype

    def refresh_recent(self) -> None:
        """Recent models by name (the built-in model's, a folder's own; the full path in the
        tooltip and the action's data), the open one ticked."""
        self.recent_menu.clear()
        current = self.models.current_path()
        recent = recent_models(self.settings)
        labels = [self._recent_label(path) for path in recent]
        names = [name for name, _tip in labels]
        for path, (name, tip) in zip(recent, labels, strict=True):
            if names.count(name) > 1 and Path(path).parent.name:  # two folders named alike
                name = f"{name} ({Path(path).parent.name})"
            action = self.recent_menu.addAction(name)
            action.setData(path)
            action.setToolTip(tip)
            action.setCheckable(True)
            action.setChecked(path == current)
            action.triggered.connect(lambda _=False, p=path: self._open_recent(p))
        self.recent_menu.setEnabled(bool(recent))

    def _recent_label(self, path: str) -> tuple[str, str]:
        """(name, tooltip) in Recent models: "model · server name" for a model on a server."""
        remote = self.servers.display_name(path) if self.servers is not None else None
        if remote is not None:
            return remote, "A model on a server (Models → Servers…)"
        return recent_label(path)

    def _open_recent(self, path: str) -> None:
        if path == self.models.current_path() and not self.models.in_progress:
            self.refresh_recent()  # the click unticked it: it is still the open one
            self.window.statusBar().showMessage(
                f"{self._recent_label(path)[0]} is already open.", 5000
            )
            return
        self.host.load_model(path)

    def explain_regenerate(self) -> str:
        """Why Ctrl+R cannot regenerate now, shown in the status bar (returned for tests)."""
        controller = self.models.controller
        if controller.state.active:
            why = (
                "Ctrl+R waits: a reply is being written. Stop it (Esc), then press Ctrl+R "
                "to write it again."
            )
        elif self.models.in_progress:
            why = "The model is still loading: Ctrl+R works once it is open."
        elif self.models.info is None:
            why = f"{NO_MODEL_YET}."
        else:
            why = "Nothing to regenerate here: Ctrl+R writes the last reply to a message again."
        self.window.statusBar().showMessage(why, 8000)
        return why

    def show_shortcuts(self) -> QMessageBox:
        """The list, read from the actions themselves (menus and window), so it cannot drift."""
        rows = "".join(
            f"<tr><td><b>{html.escape(k)}</b>&nbsp;&nbsp;</td><td>{html.escape(v)}</td></tr>"
            for k, v in shortcut_rows(self.window.menuBar(), self.window.findChildren(QAction))
        )
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts", f"<table>{rows}</table>")
        box.setParent(self.window, box.windowFlags())
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # not modal-blocking: tests and users are never stuck in it
        self.shortcuts_box = box
        return box

    def about(self) -> QMessageBox:
        """Version, licence and where Loopchat keeps its files (not modal-blocking either)."""
        box = QMessageBox(QMessageBox.Icon.NoIcon, "About Loopchat", about_text())
        box.setParent(self.window, box.windowFlags())
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # copy a path
        box.open()
        self.about_box = box
        return box

    def choose_model_file(self) -> None:
        """File → Open model file…: a GGUF file, opened like any model."""
        path, _ = QFileDialog.getOpenFileName(
            self.window, "Open a model file", "", "GGUF model files (*.gguf);;All files (*)"
        )
        if path:
            self.host.load_model(path)

    def choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self.window, "Open a model folder (HF or Meta layout)"
        )
        if folder:
            self.host.load_model(folder)

    def choose_export(self, conversation_id: int | None, fmt: str) -> None:
        if conversation_id is None:
            self.host.show_error("There is no saved conversation to export yet.", kind="notice")
            return
        title = self.library.title(conversation_id)
        folder = str(self.settings.value("export/folder", "") or Path.home())
        suggested = str(Path(folder) / export_file_name(title, fmt))
        path, _ = QFileDialog.getSaveFileName(
            self.window, "Export conversation", suggested, EXPORT_FILTERS[fmt]
        )
        if path:
            target = with_extension(Path(path), fmt)
            self.settings.setValue("export/folder", str(target.parent))
            self.host.export_conversation(conversation_id, target, fmt)

    def choose_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.window, "Import conversation", "", "JSON (*.json)"
        )
        if path:
            self.host.import_conversation(Path(path))


KEYS_WITHOUT_ACTIONS = (
    ("Enter", "Send the message"),
    ("Shift+Enter", "New line in the message"),
)
"""Keys the message box handles itself; every other shortcut is read from its action."""


def plain(text: str) -> str:
    """A menu label without its mnemonic marks and trailing ellipsis ("&Open model folder…")."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip("…").strip()


def shortcut_rows(bar: QMenuBar, extra: list[QAction]) -> list[tuple[str, str]]:
    """(keys, what they do) for every action with a shortcut: the menu bar's, in menu order,
    named by their menu path ("Chat → Regenerate last reply", plus the action's tooltip when it
    says more), then `extra` actions found in no menu (the window's and its widgets' own)."""
    rows = list(KEYS_WITHOUT_ACTIONS)
    seen: set[int] = set()

    def add(action: QAction, where: str) -> None:
        keys = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()]
        keys = [k for k in keys if k]
        if not keys or id(action) in seen:
            return
        seen.add(id(action))
        tip = action.toolTip()
        if action.isCheckable():
            where += " (on/off)"
        if tip and plain(tip) != plain(action.text()):
            where += f" — {tip}"
        rows.append((" or ".join(keys), where))

    def visit(menu: QMenu, path: list[str]) -> None:
        for action in menu.actions():
            if action.menu() is not None:
                visit(action.menu(), [*path, plain(action.menu().title())])
            elif not action.isSeparator():
                add(action, " → ".join([*path, plain(action.text())]))

    for top in bar.actions():
        if top.menu() is not None:
            visit(top.menu(), [plain(top.text())])
    for action in extra:
        add(action, plain(action.text()))
    return rows


LICENCE = "MIT"
"""pyproject.toml's `license`: the app's own code (a downloaded model has its own licence)."""


def about_text() -> str:
    """About's text: what Loopchat is, its licence, and the folders it keeps files in."""
    from desktop.paths import app_folders
    from desktop.version import app_version

    folders = "".join(
        f"<tr><td>{html.escape(what)}&nbsp;&nbsp;</td><td>{html.escape(str(path))}</td></tr>"
        for what, path in app_folders()
    )
    return (
        f"<b>Loopchat {html.escape(app_version())}</b><p>Llama 2 on your own computer, with loop "
        f"attention you can watch at work.</p><p>Licence: {LICENCE}. Each model keeps its own "
        f"licence (the model chooser names it).</p><p>Loopchat keeps its files here:</p>"
        f"<table>{folders}</table>"
    )


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
