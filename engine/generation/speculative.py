"""Speculative decoding: a cheap draft proposes the next few tokens, the model checks them all in
one forward pass, and every token the model agrees with costs no pass of its own.

Decoding a token reads every weight of the model once; reading them for k+1 positions at once
costs little more, because the time goes to moving weights, not to arithmetic. So a draft guesses
x1..xk, the model runs [last token, x1..xk] in one pass (causal loop attention over the cache plus
the new positions) and gets its distribution at each of the k+1 places. The drafted tokens are
checked in order:

* greedy: x_i is kept while it is the model's most likely token there; the first one that is not
  is replaced by the model's own choice, and everything after it is dropped;
* sampling (Leviathan et al. 2023; Chen et al. 2023): x_i is kept with probability
  min(1, p(x_i) / q(x_i)), else a token is drawn from norm(max(0, p − q)) in its place. p and q are
  the distributions the sampler draws from (`engine.generation.sampling.final_distribution`: the
  same penalty, temperature, top-k, top-p and min-p on both), so every token comes out with
  exactly the probability plain sampling gives it.

If all k are kept, the model's distribution after x_k gives one more token for free. The KV cache
is position-addressed (engine/model/kv_cache.py), so rolling back a rejected position is only
forgetting that it was written: the next pass overwrites it.

Two drafts: `PromptLookup` (no second model: the tokens that followed the latest earlier
occurrence of the text's last few tokens; a deterministic guess, q = 1 for the token it proposes)
and `ModelDraft` (a smaller model with the same vocabulary, with its own KV cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.errors import EngineError
from engine.events import DraftCheck, SamplingParams, TopToken
from engine.generation.sampling import SampleResult, final_distribution, reported
from engine.loading.loader import LoadedModel

DRAFT_K = 3
"""Tokens proposed per pass. A pass over k+1 positions costs about one decode step while k is
small next to the weights' read time, and acceptance falls with each further position. Measured
(benchmarks/speculative.py, AMD EPYC, 2 threads, 7B-shaped int4): 2, 3 and 4 positions cost
1.04, 1.11 and 1.36 decode steps, but 5 cost 2.65 (torch's CPU int4 product takes rows four at a
time), so k = 3 gave 2.5x at full acceptance against 1.9x for k = 4."""
MAX_DRAFT_K = 16
LOOKUP_NGRAM = 3
"""Longest n-gram prompt lookup tries to match (then shorter ones, down to 1)."""
RESIDUAL_SHOWN = 6


@dataclass
class Proposal:
    """Drafted tokens, and for each the draft's distribution over the vocabulary (the one its
    token was drawn from); None for a deterministic guess (q is 1 for that token)."""

    tokens: list[int]
    q: list[torch.Tensor | None]


class PromptLookup:
    """Proposes what followed the most recent earlier occurrence of the text's last n tokens
    (n = LOOKUP_NGRAM down to 1). Strong wherever a reply repeats its context: summaries, quotes,
    code edits, lists. Costs a scan of the ids, no model."""

    kind = "lookup"

    def __init__(self, ngram: int = LOOKUP_NGRAM) -> None:
        self.ngram = max(1, int(ngram))

    def propose(
        self,
        history: Sequence[int],
        k: int,
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> Proposal:
        n_hist = len(history)
        for n in range(min(self.ngram, n_hist - 1), 0, -1):
            tail = list(history[n_hist - n :])
            # Latest match first: nearby text predicts the continuation best.
            for start in range(n_hist - n - 1, -1, -1):
                if list(history[start : start + n]) == tail:
                    follow = list(history[start + n : start + n + k])
                    if follow:
                        return Proposal(follow, [None] * len(follow))
        return Proposal([], [])

    def close(self) -> None:
        pass


class ModelDraft:
    """A smaller model with the same vocabulary that guesses the next k tokens one by one, with
    the sampler's own stages on its logits, so its q is comparable with the model's p."""

    kind = "model"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self._cached: list[int] = []
        self._logits: torch.Tensor | None = None
        """The draft's logits after `_cached` (valid while `_cached` is unchanged)."""

    @property
    def name(self) -> str:
        return str(self.loaded.describe().get("name", "draft"))

    def _advance(self, ids: Sequence[int]) -> torch.Tensor:
        """Bring the draft's cache to exactly `ids`; its logits for the position after them."""
        model = self.loaded.model
        reuse = 0
        n = min(len(self._cached), len(ids))
        while reuse < n and self._cached[reuse] == ids[reuse]:
            reuse += 1
        if reuse == len(ids) and reuse == len(self._cached) and self._logits is not None:
            return self._logits
        reuse = min(reuse, len(ids) - 1)  # run at least the last id: its logits are needed
        new = list(ids[reuse:])
        tokens = torch.tensor(new, dtype=torch.long, device=self.loaded.device)
        logits = model(tokens, reuse, last_only=True)[-1]
        self._cached = list(ids)
        self._logits = logits
        return logits

    @torch.inference_mode()
    def propose(
        self,
        history: Sequence[int],
        k: int,
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> Proposal:
        k = min(k, self.loaded.max_context - len(history))
        if k < 1:
            return Proposal([], [])
        speakable = self.loaded.tokenizer.vocab_size
        ids = list(history)
        tokens: list[int] = []
        qs: list[torch.Tensor | None] = []
        logits = self._advance(ids)
        for i in range(k):
            scores = logits[:speakable].float().cpu()
            q = final_distribution(scores, ids, params)
            if params.greedy:
                token = int(torch.argmax(q))
            else:
                token = int(torch.multinomial(q, 1, generator=generator))
            tokens.append(token)
            qs.append(q)
            ids.append(token)
            if i + 1 < k:
                logits = self._advance(ids)
        return Proposal(tokens, qs)

    def close(self) -> None:
        self._cached = []
        self._logits = None


Draft = PromptLookup | ModelDraft


def check_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """EngineError unless the draft's token ids mean the same text as the model's: a proposal is a
    list of ids, and the check compares probabilities id by id."""
    mine, theirs = target.tokenizer, draft.tokenizer
    if mine.vocab_size != theirs.vocab_size:
        raise EngineError(
            f"the draft model's vocabulary has {theirs.vocab_size} tokens but the model's has "
            f"{mine.vocab_size}: a draft must use the same tokenizer (e.g. TinyLlama-1.1B-Chat "
            "for Llama-2-7B-chat, or builtin-draft for the built-in model)"
        )
    for i in range(mine.vocab_size):
        if mine.piece(i) != theirs.piece(i):
            raise EngineError(
                f"the draft model's token {i} is {theirs.piece(i)!r} but the model's is "
                f"{mine.piece(i)!r}: a draft must use the same tokenizer"
            )


@dataclass
class Pick:
    """One token for the stream: the sampler-shaped result (the model's own numbers), whether
    the draft proposed it, and the check made at its place (None for a plain step)."""

    sample: SampleResult
    drafted: bool = False
    check: DraftCheck | None = None


class Verifier:
    """Turns the model's logits and a draft's proposals into picks, one place at a time.

    `choose(logits, history)` is the plain sampler (the one path, `Sampler.sample`) for places
    no draft covers; `report_top` how many candidates each pick reports."""

    def __init__(
        self,
        params: SamplingParams,
        generator: torch.Generator | None,
        choose: Callable[[torch.Tensor, Sequence[int]], SampleResult],
        names: Callable[[int], str],
        report_top: int,
        draft_kind: str,
    ) -> None:
        self.params = params
        self.generator = generator
        self.choose = choose
        self.names = names
        self.report_top = report_top
        self.draft_kind = draft_kind
        self.proposed = 0
        self.accepted = 0

    def check(
        self,
        scores: torch.Tensor,
        history: Sequence[int],
        proposed: int,
        q: torch.Tensor | None,
    ) -> Pick:
        """The model's verdict on `proposed` at the place after `history` (float32 CPU scores)."""
        self.proposed += 1
        params = self.params
        if params.greedy:
            best = self.choose(scores, history)  # the sampler's greedy pick (penalty included)
            ok = best.token_id == proposed
            verdict = self._verdict(proposed, 1.0 if ok else 0.0, 1.0, ok)
            if ok:
                self.accepted += 1
                return Pick(best, drafted=True, check=verdict)
            return Pick(best, check=verdict)
        p = final_distribution(scores, history, params)
        qx = 1.0 if q is None else float(q[proposed])
        px = float(p[proposed])
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        if u * qx < px:  # u < p/q without dividing: p/q ≥ 1 always accepts
            self.accepted += 1
            verdict = self._verdict(proposed, px, qx, True, u)
            return Pick(reported(scores, proposed, self.report_top), True, verdict)
        residual = residual_distribution(p, q, proposed)
        token = int(torch.multinomial(residual, 1, generator=self.generator))
        verdict = self._verdict(proposed, px, qx, False, u, residual)
        return Pick(reported(scores, token, self.report_top), check=verdict)

    def _verdict(
        self,
        proposed: int,
        p: float,
        q: float,
        accepted: bool,
        u: float | None = None,
        residual: torch.Tensor | None = None,
    ) -> DraftCheck:
        rows: list[TopToken] = []
        if residual is not None:
            k = min(RESIDUAL_SHOWN, int((residual > 0).sum()))
            values, ids = torch.topk(residual, k)
            rows = [
                TopToken(int(i), self.names(int(i)), float(v))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            ]
        return DraftCheck(
            proposed_id=proposed,
            proposed_text=self.names(proposed),
            p=p,
            q=q,
            accepted=accepted,
            u=u,
            residual=rows,
            draft_kind=self.draft_kind,
        )


def residual_distribution(p: torch.Tensor, q: torch.Tensor | None, proposed: int) -> torch.Tensor:
    """norm(max(0, p − q)): what a rejected place is drawn from (a deterministic draft's q is the
    point mass on its token, so the residual is p without that token)."""
    if q is None:
        rest = p.clone()
        rest[proposed] = 0.0
    else:
        rest = (p - q).clamp_(min=0.0)
    total = float(rest.sum())
    if total <= 0.0:  # only by rounding: a rejection needs p(x) < q(x), so p − q > 0 elsewhere
        return p
    return rest / total


def round_size(k: int, history_len: int, limit: int, generated: int, max_new: int) -> int:
    """How many tokens to draft now: never past the context (every drafted token takes a place
    in the cache) nor past the reply's length (the pass yields one token more than it drafts)."""
    return max(0, min(k, limit - history_len, max_new - generated - 1))
