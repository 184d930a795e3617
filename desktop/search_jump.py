"""Search that jumps to the match: a conversation opened from a filtered list shows the message
that matched, highlighted, instead of its last page.

The list's search finds conversations by any message (`ConversationStore.list_conversations`);
opening one used to leave the user at the bottom of a long chat, hunting for the words. This
part listens to the list and the opener only: when the search box holds text as a conversation
is opened from the list, the view is asked to `reveal` it once that conversation is on screen.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject

from desktop.opener import ConversationOpener
from desktop.session import ChatSession
from desktop.views.conversation_list import ConversationList
from desktop.views.conversation_view import ConversationView


class SearchJump(QObject):
    """Reveals the searched words in a conversation opened from the filtered list."""

    def __init__(
        self,
        listing: ConversationList,
        view: ConversationView,
        opener: ConversationOpener,
        open_id: Callable[[], int | None],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.listing, self.view, self.opener, self.open_id = listing, view, opener, open_id
        self._pending: tuple[int, str] | None = None
        """(conversation, words) waiting for that conversation to be on screen."""
        # Connected after the window's own `open_requested` slot: by the time this runs, a
        # short conversation is already shown, a long one is being read in the background.
        listing.open_requested.connect(self.opened_from_list)
        opener.ready.connect(self._on_ready)
        opener.failed.connect(lambda _message: self._forget())

    def opened_from_list(self, conversation_id: int) -> None:
        words = self.listing.search.text().strip()
        if not words:
            self._pending = None
            return
        if self.open_id() == conversation_id and not self.opener.busy:
            self._pending = None
            self.view.reveal(words)
        else:
            self._pending = (conversation_id, words)

    def _on_ready(self, session: ChatSession) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == session.conversation_id:
            self.view.reveal(pending[1])

    def _forget(self) -> None:
        self._pending = None
