"""The one exception type the engine raises for problems a user can fix.

Its message is written for a dialog or a terminal line: it names the file or setting at fault and
says what to do, so callers never have to show a traceback.
"""


class EngineError(Exception):
    """A user-facing error: bad model folder, bad arguments, context overflow, offline download."""
