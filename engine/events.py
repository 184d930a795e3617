"""The records that cross from the engine to its users: frozen, plain, torch-free.

The engine yields them, the CLI prints them, the desktop worker sends them through
`Signal(object)` to the GUI thread and the store keeps them. They are frozen so no receiver can
change what another one sees, and torch-free so the window can import them before torch loads.

Each record also reads like the dict that earlier versions sent (`step["text"]`,
`result["token_ids"]`, `"text" in result`): tests outside this repository index them that way.
Sequences read that way come out as plain lists of plain values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from engine.errors import EngineError

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
"""Every dtype a user may ask for (CLI, settings, `--dtype`); "auto" lets the device choose."""
QUANT_NAMES = ("none", "int8", "int4", "file")
"""Every weight format a user may ask for (`--quant`, Models → Weights): 16-bit, quantized on
load (folders), or a GGUF file's own blocks ("file", the default for a .gguf)."""


def _plain(value: Any) -> Any:
    """A JSON-ready copy: records become dicts, tuples lists."""
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Record:
    """Read-only mapping access for dataclass records (see the module docstring)."""

    _optional: tuple[str, ...] = ()
    """Fields that count as absent (for `in` and `keys()`) while empty."""

    def keys(self) -> list[str]:
        return [
            f.name
            for f in fields(self)  # type: ignore[arg-type]
            if f.name not in self._optional or getattr(self, f.name)
        ]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return _plain(getattr(self, key))

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def to_dict(self) -> dict:
        """All fields as plain data (lists and dicts)."""
        return {key: self[key] for key in self.keys()}


GREEDY_BELOW = 1e-5
"""Temperatures at or below this are greedy: dividing logits by less overflows float32 to inf."""
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
"""torch's generator takes a 64-bit seed (signed or unsigned)."""


@dataclass(frozen=True)
class SamplingParams(_Record):
    """How adventurous the sampler is. Temperature 0 is greedy; each filter has an 'off' value.

    These defaults are the only ones: the CLI, the desktop panel and the tests read them here.
    """

    temperature: float = 0.7
    top_k: int = 40
    """Keep the k most likely tokens; 0 = off."""
    top_p: float = 0.95
    """Keep the smallest set whose probability reaches p; 1 = off."""
    min_p: float = 0.05
    """Drop tokens less likely than min_p × the top token's probability; 0 = off."""
    repetition_penalty: float = 1.0
    """Penalise tokens already in the context (CTRL-style); 1 = off, the default (as llama.cpp
    and transformers): with it on, temperature 0 no longer always picks the top token."""
    seed: int | None = None

    def validate(self) -> None:
        """EngineError for any setting the sampler cannot use (NaN and infinity included)."""
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise EngineError(
                f"temperature must be a finite number, 0 or more (0 = greedy), got "
                f"{self.temperature}"
            )
        if self.top_k < 0:
            raise EngineError(f"top-k must be 0 (off) or more, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise EngineError(f"top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise EngineError(f"min-p must be in [0, 1) (0 = off), got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise EngineError(
                f"repetition penalty must be a finite number above 0 (1 = off), got "
                f"{self.repetition_penalty}"
            )
        if self.seed is not None and not (
            isinstance(self.seed, int) and MIN_SEED <= self.seed <= MAX_SEED
        ):
            raise EngineError(f"seed must be a 64-bit integer (0 to 2**64-1), got {self.seed}")

    @property
    def greedy(self) -> bool:
        """Temperature 0, or so close to it that sampling would divide by (almost) zero."""
        return self.temperature <= GREEDY_BELOW


GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
"""Always the most likely token, every filter off (self-test, golden tests)."""

CLI_SAMPLING = SamplingParams(min_p=0.0, repetition_penalty=1.0)
"""The CLI's defaults: the filters that reshape the model's own distribution are off, so that
`--temperature 0` is exactly greedy (the contract other tools check against)."""

DEFAULT_MAX_NEW_TOKENS = 512
"""The desktop's reply length."""
CLI_MAX_NEW_TOKENS = 256
DEFAULT_REPORT_TOP = 10
"""How many candidates a step reports (top-k panel, CLI `--report-top`)."""


@dataclass(frozen=True)
class GenerationRequest:
    """What to answer and how (GUI to engine thread); `request_id` is stamped when queued."""

    messages: tuple[dict, ...] = ()
    """The conversation as {"role", "content"} dicts, system prompt first if any."""
    params: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    report_top: int = DEFAULT_REPORT_TOP
    prompt: str | None = None
    """Plain text (BOS added, no chat template) instead of `messages`: the self-test's prompt."""
    stop: tuple[str, ...] = ()
    request_id: int = 0
    reply_prefix: tuple[int, ...] = ()
    """A branch: the ids the reply already has (read, not streamed again; see
    `Generator.generate`)."""
    forced: tuple[int, ...] = ()
    """A branch: the id(s) the reply must go on with (the alternative the user picked)."""
    step: bool = False
    """Step mode: pause after the first token (and explain its pick); `resume` takes the next."""


@dataclass(frozen=True)
class TopToken(_Record):
    """One candidate next token with the model's probability for it."""

    token_id: int
    text: str
    prob: float


@dataclass(frozen=True)
class DraftCheck(_Record):
    """How speculative decoding checked one drafted token (engine/generation/speculative.py).

    `p` and `q` are the target's and the draft's probabilities of the proposed token in the
    distributions the sampler draws from (after temperature, top-k, top-p, min-p and penalty);
    the token is kept when `u` < p / q. On a rejection the step's own token was drawn from
    `residual`, the renormalised max(0, p − q), and so differs from the proposal. Greedy checks
    draw nothing (`u` None): the proposal is kept when it is the target's most likely token.
    """

    proposed_id: int
    proposed_text: str
    p: float
    q: float
    accepted: bool
    u: float | None = None
    residual: list[TopToken] = field(default_factory=list)
    draft_kind: str = ""
    """"lookup" (a repeat of earlier text) or "model" (a smaller model's guess)."""

    @classmethod
    def from_dict(cls, data: dict) -> DraftCheck:
        """Read back from `to_dict()` (the store, an export); TypeError/ValueError if it is not
        one."""
        u = data.get("u")
        return cls(
            proposed_id=int(data["proposed_id"]),
            proposed_text=str(data["proposed_text"]),
            p=float(data["p"]),
            q=float(data["q"]),
            accepted=bool(data["accepted"]),
            u=None if u is None else float(u),
            residual=[
                TopToken(int(r["token_id"]), str(r["text"]), float(r["prob"]))
                for r in data.get("residual", [])
            ],
            draft_kind=str(data.get("draft_kind", "")),
        )


@dataclass(frozen=True)
class Step(_Record):
    """One sampled token: what the chat view appends, what the top-k panel shows and what the
    desktop store keeps and reads back (a stored step has `elapsed_s` 0.0 and `request_id` 0)."""

    index: int
    """Place in its reply (0-based)."""
    token_id: int
    text: str
    """Text this token adds to the reply as streamed (may be "" while a character is incomplete)."""
    piece: str
    """The token on its own, readable (for the inspector)."""
    prob: float
    top: list[TopToken] = field(default_factory=list)
    """The model's most likely candidates at this step, most likely first."""
    elapsed_s: float = 0.0
    """Seconds since generate() was called (0.0 for a step read back from a store)."""
    request_id: int = 0
    """Which desktop request this step answers (0 outside the desktop worker)."""
    drafted: bool = False
    """Speculative decoding: the draft proposed this token and the model accepted it."""
    check: DraftCheck | None = None
    """Speculative decoding: the check of the drafted token at this place (accepted: this
    token; rejected: the proposal this token replaced). None where no draft was checked."""

    _optional = ("drafted", "check")

    def to_json(self, speculative: bool = False) -> dict:
        """The CLI's per-token JSON line (with `"drafted"` when decoding speculatively)."""
        line = {
            "token_id": self.token_id,
            "text": self.text,
            "prob": self.prob,
            "top": [{"token_id": t.token_id, "text": t.text, "prob": t.prob} for t in self.top],
        }
        if speculative:
            line["drafted"] = self.drafted
        return line


@dataclass(frozen=True)
class SamplerStage(_Record):
    """One stage of the sampler at work on one step (step mode): the distribution it leaves.

    `rows` are its most likely tokens (probabilities renormalised over what survives this stage)
    and `rest` the probability of the survivors not listed, so `rows` plus `rest` sum to 1.
    """

    key: str
    """"model", "penalty", "temperature", "top_k", "top_p" or "min_p"."""
    title: str
    setting: str
    """The setting as the panel shows it ("0.70", "40", "off")."""
    active: bool
    """False when the setting leaves the distribution as it was (off, or greedy)."""
    survivors: int
    """Tokens with probability above 0 after this stage."""
    rows: list[TopToken]
    rest: float
    note: str = ""


@dataclass(frozen=True)
class SamplerStages(_Record):
    """How the sampler chose one token, stage by stage
    (`engine.generation.sampler_stages.explain_choice`).

    `draw` is the uniform number in [0, 1) that picked the token from the last stage's
    cumulative distribution and `span` the picked token's [start, end) on it; both are None for a
    greedy pick (temperature 0: no randomness).
    """

    stages: list[SamplerStage]
    token_id: int
    text: str
    pick_prob: float
    """The picked token's probability in the distribution it was drawn from."""
    pick_rank: int
    greedy: bool
    draw: float | None = None
    span: tuple[float, float] | None = None
    is_eos: bool = False
    """The pick ends the reply (end-of-sequence): no token is added."""
    request_id: int = 0


@dataclass(frozen=True)
class GenerationStarted(_Record):
    """The prompt is built: its size, and how many of the oldest turns did not fit."""

    request_id: int
    prompt_tokens: int
    max_context: int
    dropped_turns: int = 0


@dataclass(frozen=True)
class PrefillProgress(_Record):
    """How much of the prompt the model has read: `done` of `total` positions (reused ones count).

    Reading a long prompt takes seconds before the first token; this lets a window say so.
    """

    request_id: int
    done: int
    total: int


@dataclass(frozen=True)
class DraftStats(_Record):
    """What speculative decoding did over one reply: how many tokens the draft proposed, how many
    the model accepted, and how many forward passes of the model the reply took."""

    kind: str
    proposed: int = 0
    accepted: int = 0
    passes: int = 0
    """Forward passes of the model while decoding (verifications and plain steps)."""

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    def to_json(self) -> dict:
        """The `draft` object of the CLI's done line."""
        return {"kind": self.kind, "proposed": self.proposed, "accepted": self.accepted}


@dataclass(frozen=True)
class GenerationResult(_Record):
    """How a generation ended and how fast it ran (or, with `error`, why it failed)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    generated_tokens: int
    prefill_s: float
    ttft_s: float
    decode_tokens_per_s: float
    stop_reason: str
    reused_tokens: int = 0
    request_id: int = 0
    max_context: int = 0
    dropped_turns: int = 0
    error: str = ""
    """Set when the reply failed: a message fit for the window."""
    draft: DraftStats | None = None
    """Speculative decoding's account (None when it was off)."""

    _optional = ("error", "draft")

    @classmethod
    def failed(cls, request_id: int, message: str, text: str = "") -> GenerationResult:
        """A reply that could not be made (or broke off): `stop_reason` "error"."""
        return cls(text, [], 0, 0, 0.0, 0.0, 0.0, "error", request_id=request_id, error=message)

    def timings(self) -> dict:
        """What the store keeps with a reply to show its stats line again later."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "prefill_s": self.prefill_s,
            "ttft_s": self.ttft_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "reused_tokens": self.reused_tokens,
            "dropped_turns": self.dropped_turns,
            **(
                {
                    "draft_proposed": self.draft.proposed,
                    "draft_accepted": self.draft.accepted,
                    "draft_passes": self.draft.passes,
                }
                if self.draft is not None
                else {}
            ),
        }

    def to_json(self) -> dict:
        """The CLI's last JSON line (`done`), keys in the documented order."""
        return {
            "done": True,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "prefill_s": round(self.prefill_s, 6),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 3),
            "stop_reason": self.stop_reason,
            **({"draft": self.draft.to_json()} if self.draft is not None else {}),
        }


def done_line(result: GenerationResult, described: dict) -> dict:
    """The CLI's and the self-test's last JSON line: the result, then the weight kernel that ran
    (`kernel`) and the compiled build that ran, if any (`native`, e.g. "avx2"; null if none),
    from the loaded model's `describe()` (or a ModelInfo's `extra`)."""
    return {
        **result.to_json(),
        "kernel": str(described.get("kernel", "")),
        "native": described.get("native"),
    }


@dataclass(frozen=True)
class Capabilities(_Record):
    """What a backend can do beyond streaming text, so the app offers only what works: a model
    served elsewhere may give no logits (no step mode) or no attention weights."""

    step_mode: bool = False
    """Pause after each token and explain the sampler's pick."""
    branches: bool = False
    """Continue a reply from any of its tokens with another one forced there."""
    surprisal: bool = False
    """The probability of every token of a conversation (the tint)."""
    attention: bool = False
    """Attention weights of a position (the attention view)."""
    exact_logits: bool = False
    """The numbers shown are the model's own, computed here (not a server's rounded ones)."""
    speculative: bool = False
    """Speculative decoding with a draft (`Engine.use_draft`): needs the model's logits for
    several positions in one pass."""


@dataclass(frozen=True)
class RuntimeInfo(_Record):
    """How a loaded model runs: the weight kernel and threads (engine/kernels/tuning.py), the
    compiled build (engine/kernels/native.py) and the quantized weights' cache.

    A field left None was not reported (a GPU has no thread count, 16-bit weights no cache) and
    reads as absent (`in`, `keys()`, `to_dict()`), so `describe()` lists what applies."""

    kernel: str | None = None
    """The weight kernel: "default" on a GPU, else "plain", "packed", "int8native"..."""
    kernel_source: str | None = None
    """Why that kernel: "measured", "cached", "LOOPCHAT_KERNEL" or "device"."""
    threads: int | None = None
    threads_source: str | None = None
    """Why that many threads: "measured", "cached" or "LOOPCHAT_THREADS"."""
    thread_governor: bool | None = None
    """The thread count is adjusted while decoding (threads not forced, several cores)."""
    cpu: str | None = None
    """The CPU's model name."""
    native_isa: str | None = None
    """The build of Loopchat's compiled quantized kernel that runs the weights ("avx2"...)."""
    native_ops: bool | None = None
    """Norms and rotary embedding run in Loopchat's compiled C."""
    native_blocks: bool | None = None
    """A GGUF model's one-token steps run each block as one compiled call (attention included)."""
    native: str | None = None
    """The compiled build that runs, if any (the CLI's done line, the tooltip)."""
    native_unavailable: str | None = None
    """Why the compiled kernels could not load on this CPU machine."""
    quant: str = "none"
    """Weight format: "none", "int8", "int4" or "file" (a GGUF file's own blocks)."""
    group_size: int | None = None
    """int4's quantization group size."""
    quant_cache: str | None = None
    """The file the quantized weights were cached in."""
    quant_cache_hit: bool | None = None
    """The quantized weights came from that cache (not built now)."""
    quant_load_s: float | None = None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    @classmethod
    def from_dict(cls, data: dict) -> RuntimeInfo:
        """The runtime fields of `data` (a `describe()`), ignoring the model's other facts."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


@dataclass(frozen=True)
class ModelInfo(_Record):
    """A loaded model as the window shows it (status bar, title, context limit)."""

    name: str
    path: str
    device: str
    dtype: str
    max_context: int
    n_params: int = 0
    weights_bytes: int = 0
    vocab_size: int = 0
    n_layers: int = 0
    has_chat_template: bool = False
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    """How it runs (kernel, threads, compiled build, weight format), typed."""
    extra: dict = field(default_factory=dict, compare=False)
    """Everything else the loader reports, kept as it came (the runtime's keys too, as plain
    data: the self-test's done line reads `kernel` and `native` from it)."""

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        known = {f.name for f in fields(cls)} - {"extra", "runtime"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            runtime=RuntimeInfo.from_dict(data),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass
class Inspection:
    """Per-position numbers of one prompt, as plain Python data (safe to send across threads):
    what `Engine.inspect` returns, and `RemoteEngine.inspect` (without attention).

    `logprobs[i]` is ln p(token i | tokens < i), None for i = 0; `entropy[i]` is the entropy in nats
    of the next-token distribution after position i; `attention[l][h]` is the last position's query
    weights over positions 0..n-1 in layer l, query head h (empty if not asked for). With `top`,
    `ranks[i]` is the rank of token i in the distribution it was drawn from (1 = the favourite)
    and `top_ids[i]`/`top_probs[i]` that distribution's leaders (empty lists for i = 0).
    """

    token_ids: list[int]
    pieces: list[str]
    logprobs: list[float | None]
    entropy: list[float]
    attention: list[list[list[float]]] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_probs: list[list[float]] = field(default_factory=list)

    def to_json(self) -> dict:
        """The `python -m engine inspect --json` object, exactly as DESIGN.md specifies."""
        layers = len(self.attention)
        heads = len(self.attention[0]) if layers else 0
        return {
            "token_ids": self.token_ids,
            "pieces": self.pieces,
            "logprobs": self.logprobs,
            "entropy": self.entropy,
            "attention": {"layers": layers, "heads": heads, "weights": self.attention},
        }
