"""Models served by OpenAI-compatible servers (vLLM, llama.cpp's server, Ollama...) behind the
engine's front door: `RemoteEngine` mirrors `engine.front_door.Engine`.

Importing this package is cheap (standard library only, no torch): the window imports it on
the GUI thread to list a server's models and to check a URL.
"""

from engine.remote.errors import RemoteError
from engine.remote.http_client import Limits
from engine.remote.remote_engine import RemoteEngine, list_models
from engine.remote.reply import RemoteReply
from engine.remote.token_table import INTERNED_BASE
from engine.remote.urls import (
    REMOTE_PREFIX,
    BaseUrl,
    check_base_url,
    display_url,
    is_local_url,
    parse_remote_path,
    remote_path,
)

__all__ = [
    "INTERNED_BASE",
    "REMOTE_PREFIX",
    "BaseUrl",
    "Limits",
    "RemoteEngine",
    "RemoteError",
    "RemoteReply",
    "check_base_url",
    "display_url",
    "is_local_url",
    "list_models",
    "parse_remote_path",
    "remote_path",
]
