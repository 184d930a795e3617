"""The saved conversations as the list shows them: refresh, rename, delete with Undo, purge,
export and import.

The window assembles it with the list widget, the banner and two questions about the chat on
screen (which conversation is open; open or start one); nothing here knows the window.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QTimer

from desktop.store.conversations import ConversationStore
from desktop.store.export import read_export
from desktop.store.schema import StoreError
from desktop.views.banner import Banner
from desktop.views.conversation_list import ConversationList

UNDO_WINDOW_S = 60
"""How long a deleted conversation can be restored before it is purged from the file."""


class ConversationLibrary(QObject):
    """What the conversation list asks of the store, with problems told in the banner."""

    def __init__(
        self,
        store: ConversationStore,
        listing: ConversationList,
        banner: Banner,
        show_error: Callable[..., None],
        open_id: Callable[[], int | None],
        parent: QObject,
    ) -> None:
        super().__init__(parent)
        self.store = store
        self.listing = listing
        self.banner = banner
        self.show_error = show_error
        self.open_id = open_id
        """The conversation on screen (None for a new chat not yet saved)."""
        self.undo_window_s: float = UNDO_WINDOW_S
        """How long a deleted conversation can be restored (tests shorten it)."""

    def attempt(self, action: Callable[[], object]) -> bool:
        """Run a store call; a StoreError becomes a banner instead of an exception."""
        try:
            action()
        except StoreError as exc:
            self.show_error(str(exc))
            return False
        return True

    def refresh(self) -> None:
        try:
            found = self.store.list_conversations(self.listing.search.text())
        except StoreError as exc:
            self.show_error(f"Could not list the saved conversations: {exc}")
            return
        self.listing.show_conversations(found, self.open_id())

    def rename(self, conversation_id: int, title: str) -> None:
        self.attempt(lambda: self.store.rename(conversation_id, title))
        self.refresh()

    def pin(self, conversation_id: int, pinned: bool) -> None:
        """Pin a conversation to the top of the list (or unpin it), then show the new order."""
        self.attempt(lambda: self.store.set_pinned(conversation_id, pinned))
        self.refresh()

    def delete(self, conversation_id: int, new_chat: Callable[[], None]) -> None:
        """Delete with undo (`new_chat` when it is the one on screen); after the undo window, or
        on quit, it is purged from the file."""
        title = self.title(conversation_id)
        if not self.attempt(lambda: self.store.delete_conversation(conversation_id)):
            return
        if conversation_id == self.open_id():
            new_chat()
        self.refresh()

        def undo() -> None:
            self.attempt(lambda: self.store.restore_conversation(conversation_id))
            self.refresh()

        def expire() -> None:
            self.purge_deleted()
            if self.banner.showing(undo):  # an Undo that can no longer undo must not be offered
                self.banner.hide()

        QTimer.singleShot(int(1000 * self.undo_window_s) + 500, self, expire)
        self.banner.show_message(f"Deleted “{title}”.", "notice", "Undo", undo)

    def purge_deleted(self, older_than_s: float | None = None) -> None:
        """Remove conversations deleted more than `older_than_s` (the undo window) ago."""
        age = self.undo_window_s if older_than_s is None else older_than_s
        self.attempt(lambda: self.store.purge_deleted(age))

    def title(self, conversation_id: int) -> str:
        return next(
            (c.title for c in self.store.list_conversations() if c.id == conversation_id), ""
        )

    def export(self, conversation_id: int, path: Path, fmt: str) -> None:
        try:
            if fmt == "md":
                text = self.store.export_markdown(conversation_id)
            else:
                text = json.dumps(self.store.export_json(conversation_id), ensure_ascii=False)
            path.write_text(text, encoding="utf-8")
        except StoreError as exc:
            self.show_error(f"Could not export the conversation: {exc}")
        except OSError as exc:
            self.show_error(f"Could not write {path}: {exc.strerror or exc}")

    def import_file(self, path: Path) -> int | None:
        """The id of the conversation imported from `path` (None, and a banner, if it cannot)."""
        try:
            return self.store.import_json(read_export(path))
        except StoreError as exc:
            self.show_error(f"Could not import {path.name}: {exc}")
            return None
