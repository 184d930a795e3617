"""A local HTTP server that answers like the Hugging Face Hub, for download tests.

It serves folders (or in-memory files) as model repos through the endpoints huggingface_hub 2.4
calls, so tests drive the real client end to end with `HF_ENDPOINT` pointed at `FakeHub.url`:

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: the repo info with every
  file's size and blob id (and LFS size/sha256 for weight files), as `model_info` reads it.
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: the file listing `snapshot_download` reads.
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: the file, with `X-Repo-Commit`, `ETag` (git sha1,
  or sha256 plus `X-Linked-Etag`/`X-Linked-Size` for LFS files), `Content-Length` and `Range`
  support (206 + `Content-Range`).

Like the real Hub, a gated repo's info and listing are public while its files answer 401 without
a token and 403 for a valid token without access; an unknown token gets 401 "Invalid credentials".
Errors carry `X-Error-Code`/`X-Error-Message`, which huggingface_hub turns into its exceptions.
Switches cut or reset a transfer mid-file once, and every request is recorded so tests can
assert exactly which files were fetched and with which `Range`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".pth", ".bin", ".model", ".onnx", ".gguf", ".h5", ".msgpack")
"""Files the Hub stores with Git LFS (by extension, as a repo's .gitattributes would say)."""

DEFAULT_TOKEN = "hf_good_token"


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    authorized: bool


@dataclass
class FakeRepo:
    """A repo the fake Hub serves: its files (path in repo -> bytes) and who may read them."""

    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    allowed_tokens: frozenset[str] = frozenset({DEFAULT_TOKEN})
    commit: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.repo_id.encode())
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha256(self.files[name]).digest())
        self.commit = digest.hexdigest()

    def commit_for(self, revision: str) -> str | None:
        """The commit a revision names: the branch `main` or the commit itself."""
        return self.commit if revision in ("main", self.commit) else None

    def entry(self, name: str) -> dict:
        """The listing entry of one file: size and blob id, plus LFS details for weights."""
        data = self.files[name]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        out: dict = {"size": len(data), "oid": blob}
        if name.endswith(LFS_SUFFIXES):
            out["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        return out


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, keyed by its '/'-separated path (as a repo lists it)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class FakeHub:
    """Start with `with FakeHub() as hub:` and point HF_ENDPOINT at `hub.url`."""

    def __init__(self, known_tokens: set[str] | None = None) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.known_tokens: set[str] = set(known_tokens or ()) | {DEFAULT_TOKEN}
        self.log: list[Request] = []
        self.cut_once: dict[str, int | None] = {}
        """file path -> bytes to send before closing the connection (None: half), first GET only."""
        self.reset_once: set[str] = set()
        """file paths whose first GET sends half the bytes, then resets the connection (RST)."""
        self.hold: dict[str, threading.Event] = {}
        """file-name suffix -> event: a GET of a matching file waits until the event is set."""
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - base signature
                pass  # tests stay quiet

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                hub._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client hanging up is fine
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- set-up --------------------------------------------------------------------------------

    def add(
        self,
        repo_id: str,
        folder: Path | None = None,
        *,
        files: dict[str, bytes] | None = None,
        extra_files: dict[str, bytes] | None = None,
        gated: bool = False,
        token: str | None = None,
    ) -> FakeRepo:
        """Serve a folder (and/or in-memory files) as `repo_id`; a gated repo admits `token`."""
        content = read_folder(folder) if folder is not None else {}
        content.update(files or {})
        content.update(extra_files or {})
        allowed = frozenset({token or DEFAULT_TOKEN})
        self.known_tokens |= allowed
        repo = FakeRepo(repo_id, content, gated=gated, allowed_tokens=allowed)
        self.repos[repo_id] = repo
        return repo

    # -- what the tests assert on --------------------------------------------------------------

    def gets(self, name: str | None = None) -> list[Request]:
        """GETs of file contents (resolve URLs), optionally of one file path."""
        out = [r for r in self.log if r.method == "GET" and "/resolve/" in r.path]
        if name is not None:
            out = [r for r in out if r.path.split("/resolve/", 1)[1].split("/", 1)[1] == name]
        return out

    def fetched(self) -> Counter[str]:
        """How many times each file path's content was requested."""
        return Counter(r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in self.gets())

    # -- request handling ----------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(req.path).path)
        auth = req.headers.get("Authorization")
        with self._lock:
            self.log.append(Request(req.command, path, req.headers.get("Range"), bool(auth)))
        try:
            self._route(req, path, auth)
        except (ConnectionError, TimeoutError):
            pass  # the client went away (a cancelled download)

    def _route(self, req: BaseHTTPRequestHandler, path: str, auth: str | None) -> None:
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = api or tree or resolve
        if match is None:
            return self._error(req, 404, None, "Not found")
        repo = self.repos.get(match.group(1))
        if repo is None:
            return self._error(req, 404, "RepoNotFound", "Repository not found")
        commit = repo.commit_for(match.group(2) or "main")
        if commit is None:
            return self._error(req, 404, "RevisionNotFound", "Invalid rev id")
        if api:
            return self._json(req, self._info(repo))
        if tree:
            return self._json(req, self._tree(repo, tree.group(3) or "", req.path))
        token = auth.removeprefix("Bearer ").strip() if auth else None
        if token is not None and token not in self.known_tokens:
            return self._error(req, 401, None, "Invalid credentials in Authorization header")
        if repo.gated and token is None:
            return self._error(
                req,
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
        if repo.gated and token not in repo.allowed_tokens:
            return self._error(
                req,
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized "
                "list.",
            )
        name = resolve.group(3)
        if name not in repo.files:
            return self._error(req, 404, "EntryNotFound", f"{name} does not exist on 'main'")
        self._file(req, repo, name)

    def _info(self, repo: FakeRepo) -> dict:
        return {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["llama"],
            "siblings": [self._sibling(repo, name) for name in sorted(repo.files)],
        }

    @staticmethod
    def _sibling(repo: FakeRepo, name: str) -> dict:
        """A file as model_info(files_metadata=True) lists it."""
        entry = repo.entry(name)
        out = {"rfilename": name, "size": entry["size"], "blobId": entry["oid"]}
        if "lfs" in entry:
            lfs = entry["lfs"]
            out["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": 134}
        return out

    @staticmethod
    def _tree(repo: FakeRepo, under: str, raw_path: str) -> list[dict]:
        recursive = "recursive=true" in raw_path.lower() or "recursive=1" in raw_path
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        entries: dict[str, dict] = {}
        for name in sorted(repo.files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entries[name] = {"type": "file", **repo.entry(name)}
        return [{"path": p, **e} for p, e in sorted(entries.items())]

    def _file(self, req: BaseHTTPRequestHandler, repo: FakeRepo, name: str) -> None:
        data = repo.files[name]
        entry = repo.entry(name)
        headers = {
            "X-Repo-Commit": repo.commit,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if "lfs" in entry:
            headers["ETag"] = f'"{entry["lfs"]["oid"]}"'
            headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
            headers["X-Linked-Size"] = str(len(data))
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        if req.command == "HEAD":
            return self._send(req, 200, headers, b"", length=len(data))

        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", (req.headers.get("Range") or "").strip())
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(req, 416, headers, b"")
            data = data[: end + 1]
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(repo.files[name])}"
            status = 206
        body = data[start:]
        for suffix, release in list(self.hold.items()):
            if name.endswith(suffix):
                release.wait(60)

        with self._lock:
            cut = name in self.cut_once
            cut_at = self.cut_once.pop(name, None)
            reset = name in self.reset_once
            self.reset_once.discard(name)
        if cut or reset:
            # Promise the whole body, send part of it, then hang up (FIN) or reset (RST).
            sent = len(body) // 2 if cut_at is None else min(cut_at, len(body) - 1)
            req.send_response(status)
            for key, value in headers.items():
                req.send_header(key, value)
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body[:sent])
            req.wfile.flush()
            if reset:
                # Linger 0 + close: the kernel answers with RST instead of a clean FIN.
                req.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                req.rfile.close()
                req.wfile.close()
                req.connection.close()
            req.close_connection = True
            return None
        self._send(req, status, headers, body)

    # -- responses -----------------------------------------------------------------------------

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        status: int,
        headers: dict[str, str],
        body: bytes,
        length: int | None = None,
    ) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(body) if length is None else length))
        req.end_headers()
        if req.command != "HEAD" and body:
            req.wfile.write(body)

    def _json(self, req: BaseHTTPRequestHandler, payload: object) -> None:
        body = json.dumps(payload).encode()
        self._send(req, 200, {"Content-Type": "application/json"}, body)

    def _error(
        self, req: BaseHTTPRequestHandler, status: int, code: str | None, message: str
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(req, status, headers, json.dumps({"error": message}).encode())
