"""How many tokens one prefill or injection step evaluates.

A step must stay short (other tasks wait for it, and the wall budget and heartbeats are only
checked between steps), but a step of one token wastes the batch a model evaluates at once.
So the size follows the backend's measured speed: as many tokens as fit `budget_s` at the time
per token seen so far on that backend, between `low` and `high`. Until a backend has been
measured, the first chunk is `first` tokens. Speeds are kept per backend because a 135M and a
1.5B model on the same engine differ tenfold.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChunkSizer:
    budget_s: float = 1.0
    first: int = 128
    low: int = 8
    high: int = 1024
    # A chunk's time includes a fixed cost per evaluation, so a small chunk overstates the time
    # per token and the next one comes out smaller still; chunks below this size are not measured.
    min_measured: int = 8
    _s_per_token: dict[int, float] = field(default_factory=dict)

    def size(self, backend_key: int) -> int:
        per = self._s_per_token.get(backend_key)
        if per is None:
            return self.first
        if per <= 0:
            return self.high
        return max(self.low, min(self.high, int(self.budget_s / per)))

    def observe(self, backend_key: int, n_tokens: int, seconds: float) -> None:
        if n_tokens < self.min_measured or seconds < 0:
            return
        per = seconds / n_tokens
        old = self._s_per_token.get(backend_key)
        # A slower reading counts at once (a step that ran long must not repeat); a faster one
        # moves the estimate halfway, so one lucky chunk does not double the next.
        self._s_per_token[backend_key] = per if old is None or per > old else (old + per) / 2

    def seconds_per_token(self, backend_key: int) -> float | None:
        return self._s_per_token.get(backend_key)
