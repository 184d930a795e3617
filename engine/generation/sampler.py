"""The sampler a generation uses: its seeded generator, and optionally the account of each choice.

Apart from engine/generation/sampling.py (the stages and `choose_token`) because the account
(engine/generation/sampler_stages.py) is built on those stages: this module uses both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.events import SamplingParams
from engine.generation.sampler_stages import explain_choice
from engine.generation.sampling import SampleResult, choose_token, reported


class Sampler:
    """Samples with its own seeded generator, so one seed reproduces one reply exactly.

    With `explain` on, each `sample` also leaves the stage-by-stage account of its choice in
    `last_stages` (an `engine.generation.sampler_stages.SamplerStages`); the choice is the same
    either way.
    """

    def __init__(self, params: SamplingParams) -> None:
        params.validate()
        self.params = params
        self._generator: torch.Generator | None = None
        if params.seed is not None:
            self._generator = torch.Generator(device="cpu")
            self._generator.manual_seed(int(params.seed))
        self.explain = False
        self.last_stages = None
        self.names: Callable[[int], str] | None = None
        """A token's readable text, for the explanation's rows (the generator sets it)."""
        self.eos_id: int | None = None

    @property
    def generator(self) -> torch.Generator | None:
        """The seeded random source (None: torch's global one); speculative decoding draws its
        acceptance tests and residual samples from it too, so one seed still fixes one reply."""
        return self._generator

    def sample(
        self, logits: torch.Tensor, history: Sequence[int], report_top: int = 10
    ) -> SampleResult:
        """Pick the next token from float32 logits [vocab]; `history` feeds the penalty."""
        logits = logits.float().cpu()
        if self.explain:
            self.last_stages = explain_choice(
                logits, history, self.params, self._generator, self.names, eos_id=self.eos_id
            )
            token = self.last_stages.token_id
        else:
            self.last_stages = None
            token = choose_token(logits, history, self.params, self._generator)
        return reported(logits, token, report_top)
