"""How many tokens one prefill or injection step evaluates.

A step must stay short (other tasks wait for it, and the wall budget and heartbeats are only
checked between steps), but a step of one token wastes the batch a model evaluates at once.
So the size follows the backend's measured speed: the largest power of two of tokens that fits
`budget_s` at the time per token seen so far on that backend, between `low` and `high`. Until a
backend has been measured, the first chunk is `first` tokens. Speeds are kept per backend
because a 135M and a 1.5B model on the same engine differ tenfold.

Powers of two, capped at 128 by default: llama.cpp's numbers depend slightly on where batches
split, so a prompt must be cut the same way run after run (greedy outputs then repeat exactly);
any model that evaluates 128 tokens within the budget always gets 128, and only a slower one
gets 64, 32, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChunkSizer:
    budget_s: float = 2.0
    first: int = 128
    low: int = 8
    high: int = 128
    # A chunk's time includes a fixed cost per evaluation, so a small chunk overstates the time
    # per token and the next one comes out smaller still; chunks below this size are not measured.
    min_measured: int = 8
    _s_per_token: dict[int, float] = field(default_factory=dict)

    def size(self, backend_key: int) -> int:
        per = self._s_per_token.get(backend_key)
        if per is None:
            return self.first
        fits = int(self.budget_s / per) if per > 0 else self.high
        return max(self.low, min(self.high, 1 << max(0, fits.bit_length() - 1)))

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
