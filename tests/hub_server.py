"""A local HTTP server that answers like the Hugging Face Hub, for download tests.

It serves model folders as repos through the endpoints huggingface_hub uses: the model info API
(with file sizes), and `resolve` URLs with HEAD, GET and Range. Switches make it gated, cut a
transfer mid-file once, or count requests, so tests exercise the real client end to end.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Repo:
    folder: Path
    gated: bool = False
    token: str = "hf_good_token"
    extra_files: dict[str, bytes] = field(default_factory=dict)

    def files(self) -> dict[str, bytes]:
        out = {p.name: p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file()}
        out.update(self.extra_files)
        return out


class FakeHub:
    """Start with `with FakeHub() as hub:`; point HF_ENDPOINT at `hub.url`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: Counter[str] = Counter()
        self.cut_once: set[str] = set()
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, folder: Path, **kwargs) -> Repo:
        self.repos[repo_id] = Repo(folder, **kwargs)
        return self.repos[repo_id]

    def fetched(self) -> set[str]:
        """Filenames whose content was requested with GET."""
        return {
            k.split(" ", 1)[1].rsplit("/", 1)[-1]
            for k in self.requests
            if k.startswith("GET") and "/resolve/" in k
        }

    # -- request handling --------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = req.path.split("?", 1)[0]
        with self._lock:
            self.requests[f"{'HEAD' if head else 'GET'} {path}"] += 1
        info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo_id = (info or resolve).group(1) if (info or resolve) else None
        repo = self.repos.get(repo_id or "")
        if repo is None:
            return self._error(req, 404, "RepoNotFound", "Repository not found")
        if repo.gated:
            auth = req.headers.get("Authorization", "")
            if not auth:
                return self._error(req, 401, "GatedRepo", "Access to this model is restricted")
            if auth != f"Bearer {repo.token}":
                return self._error(req, 403, "GatedRepo", "You have not been granted access")
        files = repo.files()
        if info:
            siblings = [
                {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                for name, data in files.items()
            ]
            body = json.dumps(
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": COMMIT,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "siblings": siblings,
                    "tags": [],
                    "downloads": 0,
                    "likes": 0,
                }
            ).encode()
            return self._send(req, 200, body, {"Content-Type": "application/json"}, head)
        filename = resolve.group(3)
        if filename not in files:
            return self._error(req, 404, "EntryNotFound", "Entry not found")
        data = files[filename]
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start = 0
        rng = req.headers.get("Range")
        if rng and not head:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if match:
                start = int(match.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        status = 206 if start else 200
        if not head and filename in self.cut_once:
            self.cut_once.discard(filename)
            # Promise the whole file, send half, hang up: a transfer cut mid-file.
            half = data[start : start + max(1, (len(data) - start) // 2)]
            req.send_response(status)
            for k, v in headers.items():
                req.send_header(k, v)
            req.send_header("Content-Length", str(len(data) - start))
            req.end_headers()
            req.wfile.write(half)
            req.wfile.flush()
            req.close_connection = True
            return None
        return self._send(req, status, data[start:], headers, head, full_length=len(data))

    @staticmethod
    def _send(req, status, body: bytes, headers: dict, head: bool, full_length=None) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(full_length if head and full_length else len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)

    @staticmethod
    def _error(req, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        req.send_response(status)
        req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", message)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)
