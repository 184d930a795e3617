"""`python -m engine`: generate text (streamed or as JSON lines), inspect a prompt, download models.

Exit codes: 0 success, 2 bad input (one line on stderr naming the problem), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.events import (
    CLI_MAX_NEW_TOKENS,
    CLI_SAMPLING,
    DEFAULT_REPORT_TOP,
    DTYPE_NAMES,
    QUANT_NAMES,
    done_line,
)
from engine.hub.progress_text import DownloadProgress, format_progress
from engine.remote.cli_args import add_server_arguments, open_remote

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as the contract's single stderr line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--prompt-ids must be comma-separated integers, got '{text}'"
        ) from None
    if not ids:
        raise argparse.ArgumentTypeError("--prompt-ids is empty")
    return ids


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments, exactly as DESIGN.md's contract names them."""
    parser = _Parser(prog="python -m engine", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate text from a prompt")
    gen.add_argument(
        "--model",
        required=True,
        help="model folder (HF or Meta layout), cached Hub repo id, or builtin",
    )
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (BOS is added)")
    source.add_argument(
        "--prompt-file", help="read the prompt text (UTF-8) from a file; '-' reads stdin"
    )
    source.add_argument(
        "--prompt-ids", type=_prompt_ids, help="exact token ids, e.g. 1,2,3 (no BOS added)"
    )
    gen.add_argument("--chat", action="store_true", help="wrap --prompt in the model's chat format")
    gen.add_argument("--system", help="system prompt (with --chat)")
    d = CLI_SAMPLING
    gen.add_argument("--max-new-tokens", type=int, default=CLI_MAX_NEW_TOKENS)
    gen.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    gen.add_argument("--top-p", type=float, default=d.top_p, help="1 = off")
    gen.add_argument("--min-p", type=float, default=d.min_p, help="0 = off")
    gen.add_argument(
        "--repetition-penalty", type=float, default=d.repetition_penalty, help="1 = off"
    )
    gen.add_argument("--seed", type=int, default=d.seed)
    gen.add_argument(
        "--report-top",
        type=int,
        default=DEFAULT_REPORT_TOP,
        help="top-k entries reported per token",
    )
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--dtype", choices=DTYPE_NAMES, default="auto")
    gen.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    gen.add_argument("--max-context", type=int, default=None, help="cap the KV cache length")
    gen.add_argument(
        "--quant",
        choices=QUANT_NAMES,
        default=None,
        help="weight format: none (--dtype), int8/int4 quantized on load (folders), file (a "
        ".gguf file's own blocks, its default); activations stay in --dtype",
    )
    gen.add_argument(
        "--draft",
        default=None,
        metavar="lookup|MODEL",
        help="speculative decoding: 'lookup' (repeat earlier text), 'self-int4' (the model's "
        "own 4-bit copy) or a draft model with the same vocabulary (builtin-draft for builtin)",
    )
    # 3: engine.generation.speculative.DRAFT_K (not imported here: it would load torch)
    gen.add_argument("--draft-k", type=int, default=3, help="tokens drafted per model pass")
    gen.add_argument(
        "--draft-quant",
        choices=QUANT_NAMES,
        default="none",
        help="weight format of the draft model (int4: a model's own 4-bit copy as its draft)",
    )
    gen.add_argument(
        "--json", action="store_true", help="one JSON object per token, then a done line"
    )
    add_server_arguments(gen)

    add_inspect_arguments(sub.add_parser("inspect", help="logprobs, entropy and attention"))

    down = sub.add_parser("download", help="download a model from the Hugging Face Hub")
    add_download_arguments(down)
    return parser


MAX_PROMPT_FILE_BYTES = 64 * 2**20
"""A prompt file larger than this is not a prompt (and would not fit any Llama 2 context)."""


def check_text(value: str | None, flag: str) -> None:
    """Refuse text that is not valid UTF-8 (argv bytes Python kept as lone surrogates).

    Checked before the model loads, so a bad argument costs nothing and is named precisely.
    """
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EngineError(
            f"{flag} is not valid UTF-8 text (bad byte at character {exc.start + 1}); "
            "pass UTF-8 text or use --prompt-file with a UTF-8 file"
        ) from None


def read_prompt_file(name: str) -> str:
    """The prompt in a file ('-' = stdin), decoded strictly as UTF-8."""
    from engine.files import read_bytes

    if name == "-":
        data = sys.stdin.buffer.read(MAX_PROMPT_FILE_BYTES + 1)
        if len(data) > MAX_PROMPT_FILE_BYTES:
            raise EngineError(f"the prompt on stdin is larger than {MAX_PROMPT_FILE_BYTES} bytes")
        where = "the prompt on stdin"
    else:
        path = Path(name).expanduser()
        data = read_bytes(path, MAX_PROMPT_FILE_BYTES)
        where = f"--prompt-file {path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EngineError(f"{where} is not UTF-8 text (bad byte at offset {exc.start})") from None
    return text.removeprefix("\ufeff")


def check_generate_args(ns: argparse.Namespace) -> None:
    """Everything about a `generate` request that can be wrong, found before the model loads."""
    if ns.prompt_file is not None:
        ns.prompt = read_prompt_file(ns.prompt_file)
    check_text(ns.prompt, "--prompt")
    check_text(ns.system, "--system")
    for stop in ns.stop:
        check_text(stop, "--stop")
    if ns.prompt_ids is not None and (ns.chat or ns.system):
        raise EngineError("--chat and --system need --prompt text, not --prompt-ids")
    if ns.system and not ns.chat:
        raise EngineError("--system only applies with --chat")
    if ns.max_new_tokens < 1:
        raise EngineError("--max-new-tokens must be at least 1")
    if ns.report_top < 0:
        raise EngineError("--report-top must be 0 or more")
    if ns.max_context is not None and ns.max_context < 2:
        raise EngineError(f"--max-context {ns.max_context} is too small; use at least 2 tokens")
    if not 1 <= ns.draft_k <= 16:
        raise EngineError(f"--draft-k must be between 1 and 16, got {ns.draft_k}")
    if ns.draft is not None:
        check_text(ns.draft, "--draft")
        if not ns.draft.strip():
            raise EngineError("--draft needs 'lookup' or a model")
    sampling_params(ns).validate()


def sampling_params(ns: argparse.Namespace):
    """The sampler settings the flags describe."""
    from engine.events import SamplingParams  # no torch: a --server run never loads it

    return SamplingParams(
        temperature=ns.temperature,
        top_k=ns.top_k,
        top_p=ns.top_p,
        min_p=ns.min_p,
        repetition_penalty=ns.repetition_penalty,
        seed=ns.seed,
    )


def prompt_from_args(ns: argparse.Namespace, engine) -> list[int]:
    """Token ids for the prompt the user asked for (plain, chat-wrapped or given as ids)."""
    from engine.front_door import Message

    if ns.prompt_ids is not None:
        if ns.chat or ns.system:
            raise EngineError("--chat and --system need --prompt text, not --prompt-ids")
        return list(ns.prompt_ids)
    if ns.chat:
        messages = []
        if ns.system:
            messages.append(Message("system", ns.system))
        messages.append(Message("user", ns.prompt))
        return engine.conversation_ids(messages)
    if ns.system:
        raise EngineError("--system only applies with --chat")
    return engine.tokenize(ns.prompt, bos=True)


@contextlib.contextmanager
def cancel_on_sigint(cancel: threading.Event) -> Iterator[None]:
    """While generating, Ctrl+C asks the loop to stop at the next token instead of raising.

    KeyboardInterrupt raised inside a generator's frame kills the generator mid-step (no
    result, no done line); a flag checked between tokens ends it cleanly with stop_reason
    "cancelled". A second Ctrl+C interrupts outright. Signal handlers live on the main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_generate(ns: argparse.Namespace) -> int:
    """Load, generate, and print either streamed text or the JSON-lines contract."""
    from engine.front_door import Engine

    check_generate_args(ns)
    params = sampling_params(ns)
    if ns.server is not None:
        engine = open_remote(ns)
    else:
        engine = Engine.open(
            ns.model, dtype=ns.dtype, device=ns.device, max_context=ns.max_context, quant=ns.quant
        )
    if engine.context_note:
        sys.stderr.write(f"note: {engine.context_note}\n")
    if ns.draft is not None:
        engine.use_draft(ns.draft, k=ns.draft_k, quant=ns.draft_quant)
    prompt = prompt_from_args(ns, engine)
    cancel = threading.Event()
    reply = engine.reply(
        prompt,
        params,
        max_new_tokens=ns.max_new_tokens,
        stop=ns.stop,
        cancel=cancel,
        report_top=ns.report_top,
    )
    out = sys.stdout
    streamed = []
    with cancel_on_sigint(cancel):
        for step in reply:
            if ns.json:
                line = step.to_json(speculative=ns.draft is not None)
                out.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
            else:
                out.write(step.text)
                streamed.append(step.text)
            out.flush()
    result = reply.result
    if result is None:  # the stream was cut short by an error already reported
        raise EngineError("generation ended without a result")
    if ns.json:
        line = done_line(result, engine.describe())
        out.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
    else:
        shown = "".join(streamed)
        if result.text.startswith(shown):
            out.write(result.text[len(shown) :])
        out.write("\n")
        sys.stderr.write(
            f"[{result.prompt_tokens} prompt tokens, {result.generated_tokens} generated, "
            f"prefill {result.prefill_s:.2f} s, {result.decode_tokens_per_s:.1f} tok/s, "
            f"stop: {result.stop_reason}]\n"
        )
        if result.draft is not None:
            d = result.draft
            sys.stderr.write(
                f"[draft {d.kind}: {d.accepted} of {d.proposed} proposed tokens accepted, "
                f"{result.generated_tokens} tokens in {d.passes} model passes]\n"
            )
    out.flush()
    return EXIT_INTERRUPTED if result.stop_reason == "cancelled" else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn every user-fixable problem into one stderr line and exit 2."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if ns.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if ns.command == "generate":
            return run_generate(ns)
        if ns.command == "inspect":
            return run_inspect(ns)
        return run_download(ns)
    except EngineError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"error: {message}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


# ----------------------------------------------------------------------------------------------
# CLI: python -m engine inspect --model PATH (--prompt T | --prompt-ids | --prompt-file) --json


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """The `inspect` subcommand's arguments (DESIGN.md's inspect contract)."""
    parser.add_argument("--model", required=True, help="model folder, cached Hub repo id, builtin")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (BOS is added)")
    source.add_argument(
        "--prompt-file", help="read the prompt text (UTF-8) from a file; '-' reads stdin"
    )
    source.add_argument(
        "--prompt-ids", type=_prompt_ids, help="exact token ids, e.g. 1,2,3 (no BOS added)"
    )
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="auto")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument(
        "--quant",
        choices=QUANT_NAMES,
        default=None,
        help="weight format: none (--dtype), int8/int4 quantized on load (folders), file (a "
        ".gguf file's own blocks, its default); activations stay in --dtype",
    )
    parser.add_argument("--max-context", type=int, default=None, help="cap the KV cache length")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_server_arguments(parser)


def run_inspect(ns: argparse.Namespace) -> int:
    """Load, prefill the prompt once with attention capture, print the inspection."""
    from engine.front_door import Engine

    if ns.prompt_file is not None:
        ns.prompt = read_prompt_file(ns.prompt_file)
    check_text(ns.prompt, "--prompt")
    if ns.max_context is not None and ns.max_context < 2:
        raise EngineError(f"--max-context {ns.max_context} is too small; use at least 2 tokens")
    if ns.server is not None:
        engine = open_remote(ns)
    else:
        engine = Engine.open(
            ns.model, dtype=ns.dtype, device=ns.device, max_context=ns.max_context, quant=ns.quant
        )
    if engine.context_note:
        sys.stderr.write(f"note: {engine.context_note}\n")
    if ns.prompt_ids is not None:
        ids = list(ns.prompt_ids)
    else:
        ids = engine.tokenize(ns.prompt, bos=True)
    result = engine.inspect(ids, attention=ns.server is None)
    out = sys.stdout
    if ns.json:
        out.write(json.dumps(result.to_json(), ensure_ascii=False, allow_nan=False) + "\n")
    else:
        for i, piece in enumerate(result.pieces):
            lp = result.logprobs[i]
            shown = "      -" if lp is None else f"{lp:7.3f}"
            out.write(f"{i:5d} {result.token_ids[i]:6d} {shown} {result.entropy[i]:6.3f} {piece}\n")
    out.flush()
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# CLI: python -m engine download REPO_ID [--revision REV] [--token TOKEN]


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """The `download` subcommand's arguments (DESIGN.md's CLI contract)."""
    parser.add_argument("repo_id", help="Hub repo id, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument(
        "--token",
        default=None,
        help="Hugging Face access token for gated models (default: HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument(
        "--file",
        dest="filename",
        default=None,
        metavar="NAME.gguf",
        help="for a GGUF repo: the one .gguf file to fetch (default: its Q4_K_M file)",
    )


class _TerminalProgress:
    """Progress on stderr: one line redrawn in a terminal, a line per file and every few seconds
    otherwise (logs stay short)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last = 0.0
        self.open_line = False

    def __call__(self, p: DownloadProgress) -> None:
        now = time.monotonic()
        file_done = p.file_total_bytes > 0 and p.file_done_bytes >= p.file_total_bytes
        interval = 0.2 if self.tty else 5.0
        if not (file_done or now - self.last >= interval):
            return
        self.last = now
        line = format_progress(p)
        if self.tty:
            self.stream.write("\r" + line[:118].ljust(118))
            self.open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def run_download(ns: argparse.Namespace) -> int:
    """Run `download`: progress on stderr, the snapshot folder (a GGUF repo: the file) as the last
    line of stdout, exit 0; a problem is one line on stderr and exit 2."""
    from engine.hub.download import download_model

    show = _TerminalProgress(sys.stderr)
    try:
        folder = download_model(
            ns.repo_id,
            revision=ns.revision,
            token=ns.token,
            progress=show,
            filename=ns.filename,
        )
    except EngineError as exc:
        show.end()
        sys.stderr.write(f"error: {' '.join(str(exc).split())}\n")
        sys.stderr.flush()
        return EXIT_BAD_INPUT
    finally:
        show.end()
    sys.stdout.write(f"{folder}\n")
    sys.stdout.flush()
    return 0
