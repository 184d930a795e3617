"""Models from the Hugging Face Hub: catalogue, download with progress and cancel, cache lookup.

Downloads go into the standard Hugging Face cache through huggingface_hub, so a model fetched by any
other tool is found and not fetched again. Only the files the engine reads are downloaded.
Environment variables (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, HF_TOKEN) are read at call time.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError

log = logging.getLogger(__name__)

HF_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
    "*.safetensors",
]
META_PATTERNS = ["params.json", "tokenizer.model", "consolidated.*.pth"]
RETRIES = 4
"""Attempts per file: an interrupted transfer resumes from its partial file on the next try."""


class DownloadCancelled(EngineError):
    """The user cancelled; nothing half-downloaded is offered as a model."""


@dataclass(frozen=True)
class DownloadProgress:
    """A snapshot of one download, plain data for a progress dialog or a terminal line."""

    repo_id: str
    filename: str
    done_bytes: int
    total_bytes: int
    speed_bps: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def format_progress(p: DownloadProgress) -> str:
    """One terminal line: file, bytes, percentage, speed and time left."""
    eta = f", {p.eta_s:.0f} s left" if p.eta_s is not None else ""
    return (
        f"{p.filename}: {format_bytes(p.done_bytes)} / {format_bytes(p.total_bytes)} "
        f"({100 * p.fraction:.0f}%) at {format_bytes(p.speed_bps)}/s{eta}"
    )


# ----------------------------------------------------------------------------------------------
# Catalogue and cache


def load_catalogue() -> list[dict[str, Any]]:
    """The model catalogue shipped in resources/ (found installed and frozen alike)."""
    from importlib import resources

    text = resources.files("resources").joinpath("catalogue.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _cache_dir() -> Path:
    """The hub cache folder, from HF_HUB_CACHE / HF_HOME / the default, read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def is_model_complete(folder: Path) -> bool:
    """True when the folder holds every file the engine needs (no half download is a model)."""
    if not (folder / "tokenizer.model").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if (folder / "config.json").is_file():
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError):
                return False
            return all((folder / s).is_file() for s in shards)
        return any(folder.glob("*.safetensors"))
    return (folder / "params.json").is_file() and any(folder.glob("consolidated.*.pth"))


def list_cached_models() -> list[dict[str, Any]]:
    """Complete Llama models already in the local Hugging Face cache (newest snapshot each)."""
    found = []
    root = _cache_dir()
    if not root.is_dir():
        return found
    for repo_dir in sorted(root.glob("models--*")):
        snapshots = sorted(
            (p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for snap in snapshots:
            if is_model_complete(snap):
                size = sum(f.stat().st_size for f in snap.iterdir() if f.is_file())
                repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
                found.append({"repo_id": repo_id, "path": str(snap), "size_bytes": size})
                break
    return found


def resolve_model(path_or_repo: str) -> Path:
    """A local model folder, or the cached snapshot of a Hub repo id (never downloads)."""
    candidate = Path(path_or_repo).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise EngineError(f"{candidate} is a file; choose the model's folder")
        return candidate
    if path_or_repo.count("/") == 1 and not path_or_repo.startswith((".", "/", "~")):
        repo_dir = _cache_dir() / ("models--" + path_or_repo.replace("/", "--"))
        snapshots = sorted(
            (p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        ref = repo_dir / "refs" / "main"
        if ref.is_file():
            main = repo_dir / "snapshots" / ref.read_text().strip()
            if main in snapshots:
                snapshots.remove(main)
                snapshots.insert(0, main)
        for snap in snapshots:
            if is_model_complete(snap):
                return snap
        if snapshots:
            raise EngineError(
                f"the cached download of {path_or_repo} is incomplete; run "
                f"`python -m engine download {path_or_repo}` to finish it"
            )
    raise EngineError(
        f"no folder or cached Hub model named '{path_or_repo}'; pick a model folder or download "
        f"it with `python -m engine download {path_or_repo}`"
    )


# ----------------------------------------------------------------------------------------------
# Download


def _is_llama_config(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return config.get("model_type") == "llama" or "LlamaForCausalLM" in archs


def _pick_files(siblings: dict[str, int]) -> tuple[str, list[str]]:
    """The layout and the files of the listing that the engine needs."""
    names = list(siblings)
    if "config.json" in siblings and any(
        n.endswith(".safetensors") and "/" not in n for n in names
    ):
        patterns = HF_PATTERNS
        layout = "hf"
    elif "params.json" in siblings and any(fnmatch.fnmatch(n, "consolidated.*.pth") for n in names):
        patterns = META_PATTERNS
        layout = "meta"
    else:
        raise EngineError(
            "the repo has no Llama weights Loopchat can read (config.json + *.safetensors, or "
            "params.json + consolidated.*.pth)"
        )
    wanted = [n for n in names if "/" not in n and any(fnmatch.fnmatch(n, p) for p in patterns)]
    if "tokenizer.model" not in wanted:
        raise EngineError("the repo has no tokenizer.model (SentencePiece); Loopchat needs it")
    return layout, sorted(wanted)


def _translate(exc: BaseException, repo_id: str, token: str | None) -> EngineError:
    """One line that says what went wrong and what to do, for every failure of the client."""
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, hf_errors.GatedRepoError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if token and status == 403:
            return EngineError(
                f"{repo_id} is gated and your token has no access yet: accept the licence on "
                f"{_endpoint()}/{repo_id} with the account of that token, then try again"
            )
        return EngineError(
            f"{repo_id} is gated: accept its licence on {_endpoint()}/{repo_id}, then give an "
            "access token (--token, or `hf auth login`)"
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return EngineError(f"{repo_id} has no such revision; check --revision")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return EngineError(
            f"no model '{repo_id}' on the Hub (or it is private): check the repo id"
            + ("" if token else ", or give a token if it is private")
        )
    if isinstance(exc, (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError)) or (
        _is_network_error(exc)
    ):
        return EngineError(
            f"cannot reach {_endpoint()} to download {repo_id}: check your internet connection "
            "(or proxy) and try again; models already downloaded still work offline"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return EngineError(
            f"the disk holding {_cache_dir()} is full: free some space (or set HF_HOME to a "
            "bigger disk) and run the download again; it resumes where it stopped"
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return EngineError(f"the Hub refused the download of {repo_id}: {str(exc).splitlines()[0]}")
    return EngineError(f"downloading {repo_id} failed: {exc}")


def _is_network_error(exc: BaseException) -> bool:
    """True for connection failures of any HTTP stack huggingface_hub may use (httpx, httpx2…)."""
    names = {
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "RemoteProtocolError",
        "ReadError",
        "ProxyError",
        "NetworkError",
    }
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError) or any(
            cls.__name__ in names for cls in type(seen).__mro__
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _http_client_reset() -> None:
    """huggingface_hub caches its endpoint and session; refresh them from the environment."""
    import huggingface_hub.constants as constants

    constants.ENDPOINT = _endpoint()
    constants.HF_HUB_OFFLINE = _offline()
    constants.HF_HUB_CACHE = str(_cache_dir())
    constants.HUGGINGFACE_CO_URL_TEMPLATE = (
        constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"
    )


def download_model(
    repo_id: str,
    revision: str | None = None,
    token: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Fetch the files the engine needs into the HF cache and return the snapshot folder."""
    from huggingface_hub import HfApi, hf_hub_download
    from tqdm.auto import tqdm as base_tqdm

    if _offline():
        try:
            return resolve_model(repo_id)
        except EngineError:
            raise EngineError(
                f"HF_HUB_OFFLINE is set and {repo_id} is not in the cache: unset it to download"
            ) from None
    _http_client_reset()
    token = token or None
    cache = str(_cache_dir())
    api = HfApi(endpoint=_endpoint(), token=token)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
        layout, files = _pick_files(sizes)
        commit = info.sha or revision
        # Refuse non-Llama repos before fetching any weight.
        config_name = "config.json" if layout == "hf" else "params.json"
        config_path = hf_hub_download(
            repo_id,
            config_name,
            revision=commit,
            token=token,
            cache_dir=cache,
            endpoint=_endpoint(),
        )
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        if layout == "hf" and not _is_llama_config(config):
            raise EngineError(
                f"{repo_id} is not a Llama model (model_type '{config.get('model_type')}'); "
                "Loopchat runs Llama 2 architecture models"
            )
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise _translate(exc, repo_id, token) from None

    total = sum(sizes[f] for f in files)
    done_before = 0
    started = time.monotonic()
    report = progress or (lambda p: None)
    state = {"file": "", "done": 0}

    def emit(filename: str, file_done: int) -> None:
        done = done_before + file_done
        elapsed = max(time.monotonic() - started, 1e-6)
        speed = done / elapsed
        eta = (total - done) / speed if speed > 0 else None
        report(DownloadProgress(repo_id, filename, done, total, speed, eta))

    class _ProgressBar(base_tqdm):  # type: ignore[misc, valid-type]
        """Sees huggingface_hub's byte updates; also where cancel takes effect."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed with the bar
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"download of {repo_id} cancelled")
            out = super().update(n)
            if n:
                state["done"] = int(self.n)
                emit(state["file"], state["done"])
            return out

        def close(self) -> None:
            f = self.fp
            super().close()
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass

    folder: Path | None = None
    for name in files:
        state["file"] = name
        emit(name, 0)
        for attempt in range(1, RETRIES + 1):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"download of {repo_id} cancelled")
            try:
                path = hf_hub_download(
                    repo_id,
                    name,
                    revision=commit,
                    token=token,
                    cache_dir=cache,
                    endpoint=_endpoint(),
                    tqdm_class=_ProgressBar,
                )
                break
            except DownloadCancelled:
                raise
            except Exception as exc:  # noqa: BLE001
                error = _translate(exc, repo_id, token)
                transient = (
                    _is_network_error(exc)
                    or "IncompleteRead" in repr(exc)
                    or ("RemoteProtocolError" in repr(exc) or "ReadError" in repr(exc))
                )
                if attempt == RETRIES or not transient:
                    raise error from None
                log.warning("download of %s interrupted (%s); retrying", name, exc)
                time.sleep(min(2 ** (attempt - 1), 8) * 0.25)
        done_before += sizes[name]
        emit(name, 0)
        folder = Path(path).parent
    assert folder is not None
    if not is_model_complete(folder):
        raise EngineError(f"the download of {repo_id} finished but {folder} is incomplete")
    return folder


# ----------------------------------------------------------------------------------------------
# CLI: python -m engine download


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo_id", help="Hub repo id, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--token", default=None, help="Hugging Face access token for gated models")


def run_download(ns: argparse.Namespace) -> int:
    """Download with progress on stderr; the snapshot folder is the last line of stdout."""
    last = [0.0]

    def show(p: DownloadProgress) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or p.done_bytes >= p.total_bytes:
            last[0] = now
            sys.stderr.write("\r" + format_progress(p).ljust(78))
            sys.stderr.flush()

    folder = download_model(
        ns.repo_id,
        revision=ns.revision,
        token=ns.token or os.environ.get("HF_TOKEN"),
        progress=show,
    )
    sys.stderr.write("\n")
    sys.stdout.write(f"{folder}\n")
    sys.stdout.flush()
    return 0
