"""The states of the engine's one reply, and which changes between them are possible.

The controller (desktop.controller) owns the current state and is the only one that changes it;
the window, the chat screen, step mode and the session read it (`controller.state`, `busy`,
`paused`, `loading`) or react to `controller.state_changed`.

```
             load ──► LOADING ──answer──┐  (a failed load passes through FAILED)
                        │ generate      ▼
   ┌──────────────── PREFILLING ◄── generate ── IDLE ◄──────────────┐
   │                    │ first token                               │
   │ stop               ▼                     answer (finished)     │
   ├──────────────── STREAMING ─────────────────────────────────────┤
   │                 ▲      │ step / pause                          │
   │         resume  │      ▼                                       │
   ├──────────────── PAUSED                                         │
   ▼                                                                │
 STOPPING ──── answer (finished: "cancelled") ──────────────────────┘
   any reply state ── generation_failed ──► FAILED ──► IDLE
```

FAILED is passed through, never stayed in: a failed reply or load is announced as FAILED and the
controller settles at once (IDLE, or LOADING while another load is queued), so every "nothing
runs now" moment is IDLE. An answer that ends a reply while a load waits behind it settles in
LOADING instead of IDLE.
"""

from __future__ import annotations

import enum


class ReplyState(enum.Enum):
    LOADING = "loading"
    """A model load is under way and no reply runs (replies asked meanwhile wait behind it)."""
    IDLE = "idle"
    PREFILLING = "prefilling"
    """A reply was asked for: the engine fits and prefills its prompt (no token yet)."""
    STREAMING = "streaming"
    PAUSED = "paused"
    """A step-mode reply waits for Next token / Continue / Stop (its stream is held)."""
    STOPPING = "stopping"
    """Stop was asked for; the reply's (cancelled) answer has not come yet."""
    FAILED = "failed"
    """A reply or load failed: announced, then the controller settles (IDLE or LOADING)."""

    @property
    def busy(self) -> bool:
        """A reply is being written (or stopped): nothing else may be asked of the engine."""
        return self in (ReplyState.PREFILLING, ReplyState.STREAMING, ReplyState.STOPPING)

    @property
    def active(self) -> bool:
        """A reply exists: running, stopping or paused (Stop has something to end)."""
        return self.busy or self is ReplyState.PAUSED


_S = ReplyState
ALLOWED: dict[ReplyState, frozenset[ReplyState]] = {
    _S.LOADING: frozenset({_S.IDLE, _S.FAILED, _S.PREFILLING}),
    _S.IDLE: frozenset({_S.LOADING, _S.PREFILLING}),
    _S.PREFILLING: frozenset({_S.STREAMING, _S.STOPPING, _S.IDLE, _S.LOADING, _S.FAILED}),
    _S.STREAMING: frozenset(
        {_S.PAUSED, _S.STOPPING, _S.IDLE, _S.LOADING, _S.FAILED, _S.PREFILLING}
    ),
    _S.PAUSED: frozenset({_S.STREAMING, _S.STOPPING, _S.PREFILLING}),
    _S.STOPPING: frozenset({_S.IDLE, _S.LOADING, _S.FAILED, _S.PREFILLING}),
    _S.FAILED: frozenset({_S.IDLE, _S.LOADING, _S.PREFILLING}),
}
"""Every change the controller may make. A new request may replace a running one (PREFILLING
from STREAMING, PAUSED or STOPPING: the worker ends the old one first, its answer is then stale);
a reply whose answer comes while a load is queued settles in LOADING."""
