"""Conversations on disk: one SQLite database, saved as the user sends and as the model streams.

One module per job; import each name from the module that defines it:

* `conversations`: `ConversationStore`, the entry point (whole conversations: list, search,
  read, rename, delete and purge, export/import), built on the two below.
* `messages`: `MessageStore`, a conversation's messages, replies as they stream, their versions;
  `make_title`.
* `connection`: `StoreConnection`, the file, its lock and transactions, app-state meta;
  `default_path`.
* `schema`: the records (`Conversation`, `Message`, whose steps are `engine.events.Step`s),
  `StoreError`, the SQL schema and its migrations.
* `rows`: column lists, rows → records (lenient), the shared INSERTs.
* `recovery`: opening the file, moving a damaged one aside, read-only mode.
* `importing`: writing a validated import into the database.
* `export`: a conversation as JSON or Markdown, and reading and validating an export file.
* `autosave`: `Autosaver`, batching a streaming reply's saves.

`ConversationStore` is also importable from here (`from desktop.store import ConversationStore`):
it is the store's documented entry point, kept for scripts and checks outside the app, and the
only name this package re-exports. No Qt and no torch anywhere in the package: the worker, tests
and a crash-test subprocess all use it directly.
"""

from desktop.store.conversations import ConversationStore as ConversationStore
