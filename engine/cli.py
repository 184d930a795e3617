"""`python -m engine`: generate text (streamed or as JSON lines) and download models.

Exit codes: 0 success, 2 bad input (one line on stderr naming the problem), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence

from engine.errors import EngineError

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
    from engine.hub import add_download_arguments

    parser = _Parser(prog="python -m engine", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate text from a prompt")
    gen.add_argument(
        "--model", required=True, help="model folder (HF or Meta layout) or cached Hub repo id"
    )
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (BOS is added)")
    source.add_argument(
        "--prompt-ids", type=_prompt_ids, help="exact token ids, e.g. 1,2,3 (no BOS added)"
    )
    gen.add_argument("--chat", action="store_true", help="wrap --prompt in the model's chat format")
    gen.add_argument("--system", help="system prompt (with --chat)")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=40, help="0 = off")
    gen.add_argument("--top-p", type=float, default=0.95, help="1 = off")
    gen.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--report-top", type=int, default=10, help="top-k entries reported per token")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    gen.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    gen.add_argument("--max-context", type=int, default=None, help="cap the KV cache length")
    gen.add_argument(
        "--quant",
        choices=["none", "int8", "int4"],
        default="none",
        help="weight-only quantization on load (activations stay in --dtype)",
    )
    gen.add_argument(
        "--json", action="store_true", help="one JSON object per token, then a done line"
    )

    down = sub.add_parser("download", help="download a model from the Hugging Face Hub")
    add_download_arguments(down)
    return parser


def prompt_from_args(ns: argparse.Namespace, loaded) -> list[int]:
    """Token ids for the prompt the user asked for (plain, chat-wrapped or given as ids)."""
    from engine.chat import Message, chat_prompt_ids

    if ns.prompt_ids is not None:
        if ns.chat or ns.system:
            raise EngineError("--chat and --system need --prompt text, not --prompt-ids")
        return list(ns.prompt_ids)
    if ns.chat:
        messages = []
        if ns.system:
            messages.append(Message("system", ns.system))
        messages.append(Message("user", ns.prompt))
        return chat_prompt_ids(loaded.tokenizer, messages, loaded.chat_template)
    if ns.system:
        raise EngineError("--system only applies with --chat")
    return loaded.tokenizer.encode(ns.prompt, bos=True)


def run_generate(ns: argparse.Namespace) -> int:
    """Load, generate, and print either streamed text or the JSON-lines contract."""
    from engine.generate import Generator
    from engine.loader import load_model
    from engine.sampling import SamplingParams

    params = SamplingParams(
        temperature=ns.temperature,
        top_k=ns.top_k,
        top_p=ns.top_p,
        min_p=ns.min_p,
        repetition_penalty=ns.repetition_penalty,
        seed=ns.seed,
    )
    loaded = load_model(
        ns.model, dtype=ns.dtype, device=ns.device, max_context=ns.max_context, quant=ns.quant
    )
    prompt = prompt_from_args(ns, loaded)
    cancel = threading.Event()
    generation = Generator(loaded).generate(
        prompt,
        params,
        max_new_tokens=ns.max_new_tokens,
        stop=ns.stop,
        cancel=cancel,
        report_top=ns.report_top,
    )
    out = sys.stdout
    streamed = []
    try:
        for step in generation:
            if ns.json:
                out.write(json.dumps(step.to_json(), ensure_ascii=False) + "\n")
            else:
                out.write(step.text)
                streamed.append(step.text)
            out.flush()
    except KeyboardInterrupt:
        cancel.set()
        for _ in generation:  # let the generator finish cleanly with stop_reason "cancelled"
            pass
    result = generation.result
    assert result is not None
    if ns.json:
        out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
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
        from engine.hub import run_download

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
