"""The model chooser's "Servers" section: each added server's models, asked for in the
background (desktop.server_models) while the chooser is up, marked remote.

A server that cannot be reached is listed greyed with the reason; one still answering shows
"Asking … for its models…". Choosing a model emits its `remote:<server id>/<model id>` path
like any other model's path.
"""

from __future__ import annotations

import html

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QListWidget, QListWidgetItem

from desktop.server_models import ServerModels
from desktop.servers import ServerList, model_display_name, remote_path

HEADING = "Servers"
SEPARATOR = "   ·   "


class ServerRows(QObject):
    """Keeps the Servers section of `items` (a heading, then rows) up to date with the answers.

    `is_open(entry)` tells which row is the open model (marked like the chooser's others).
    """

    def __init__(
        self,
        items: QListWidget,
        servers: ServerList | None,
        models: ServerModels | None,
        is_open,
        mark,
        parent: QObject,
    ) -> None:
        super().__init__(parent)
        self.items, self.servers, self.lister = items, servers, models
        self.is_open, self.mark = is_open, mark
        self.answers: dict[str, list[str] | str] = {}
        """Per server id: its model ids, or why they could not be listed."""
        if servers is None or models is None:
            return
        models.listed.connect(self._on_listed)
        models.failed.connect(self._on_failed)
        for server in servers.servers():
            models.list_server(server.id)

    def add(self) -> None:
        """Append the section (the heading and one row per model, server or note); nothing when
        no server was added (Models → Servers… adds one)."""
        if self.servers is None or not self.servers.servers():
            return
        self.items.addItem(self._heading())
        for item in self._rows():
            self.items.addItem(item)

    def _heading(self) -> QListWidgetItem:
        heading = QListWidgetItem(HEADING)
        heading.setFlags(Qt.ItemFlag.NoItemFlags)
        font = QFont(self.items.font())
        font.setBold(True)
        heading.setFont(font)
        return heading

    def _rows(self) -> list[QListWidgetItem]:
        servers = self.servers.servers() if self.servers is not None else []
        rows: list[QListWidgetItem] = []
        for server in servers:
            answer = self.answers.get(server.id)
            if answer is None:
                rows.append(self._note(f"Asking {server.name} for its models…", server.base_url))
            elif isinstance(answer, str):
                note = self._note(f"{server.name}: can't list its models: {answer}")
                note.setToolTip(f"{server.base_url}\n{answer}")
                rows.append(note)
            elif not answer:
                rows.append(self._note(f"{server.name}: the server lists no models"))
            for model_id in answer if isinstance(answer, list) else []:
                rows.append(self._model(server, model_id))
        return rows

    def _model(self, server, model_id: str) -> QListWidgetItem:
        path = remote_path(server.id, model_id)
        item = QListWidgetItem(f"{model_id}{SEPARATOR}{server.name}{SEPARATOR}remote")
        item.setToolTip(f"Served by {server.name} ({server.base_url})")
        item.setData(
            Qt.ItemDataRole.UserRole,
            {
                "kind": "remote",
                "section": HEADING,
                "repo_id": path,
                # The chooser's details line is rich text: what a server names is shown as data.
                "name": html.escape(model_display_name(model_id, server.name)),
                "path": path,
                "gated": False,
                "description": html.escape(
                    f"A model served by {server.name} ({server.base_url}): it runs there, not "
                    "on this computer. The panels show what the server gives."
                ),
                "licence": "",
            },
        )
        if self.is_open(item.data(Qt.ItemDataRole.UserRole)):
            self.mark(item)
        return item

    @staticmethod
    def _note(text: str, tip: str = "") -> QListWidgetItem:
        note = QListWidgetItem(f"   {text}")
        note.setFlags(Qt.ItemFlag.NoItemFlags)  # greyed: not a model to choose
        note.setToolTip(tip)
        note.setData(Qt.ItemDataRole.UserRole, {"kind": "note", "section": HEADING})
        return note

    def model_rows(self) -> list[dict]:
        """The entries of the section's models (tests)."""
        found = []
        for row in range(self.items.count()):
            data = self.items.item(row).data(Qt.ItemDataRole.UserRole) or {}
            if data.get("kind") == "remote":
                found.append(data)
        return found

    # -- answers -------------------------------------------------------------------------------

    def _on_listed(self, token: str, models: object) -> None:
        if self.servers is not None and self.servers.get(token) is not None:
            self.answers[token] = [str(m) for m in models]  # type: ignore[union-attr]
            self._relist()

    def _on_failed(self, token: str, message: str) -> None:
        if self.servers is not None and self.servers.get(token) is not None:
            self.answers[token] = message
            self._relist()

    def _relist(self) -> None:
        """Replace the section's rows in place (up to the next heading), keeping the row the user
        has selected."""
        start = next(
            (r for r in range(self.items.count()) if self.items.item(r).text() == HEADING), None
        )
        if start is None:
            return
        current = self.items.currentItem()
        current_data = current.data(Qt.ItemDataRole.UserRole) if current is not None else None
        end = start + 1
        while end < self.items.count() and self._in_section(end):
            end += 1
        for _ in range(end - start - 1):
            self.items.takeItem(start + 1)
        for offset, item in enumerate(self._rows(), start=1):
            self.items.insertItem(start + offset, item)
        if current_data is not None and current_data.get("kind") == "remote":
            for row in range(self.items.count()):
                if self.items.item(row).data(Qt.ItemDataRole.UserRole) == current_data:
                    self.items.setCurrentRow(row)

    def _in_section(self, row: int) -> bool:
        """Whether `row` is one of this section's own rows (a model or one of its notes)."""
        data = self.items.item(row).data(Qt.ItemDataRole.UserRole) or {}
        return data.get("section") == HEADING
