"""A stand-in for `sgl_kernel`, SGLang's compiled kernel package, for SGLang's CPU path on this
machine (`scripts/sglang-server.sh`, which puts this folder on PYTHONPATH).

Why it exists: with SGLANG_USE_CPU_ENGINE=1, sglang 0.5.23 imports a few CPU kernels from
`sgl_kernel` at module level (memory pool, request-to-token allocation, speculative decoding),
so `python -m sglang.launch_server` fails with "No module named 'sgl_kernel'" without it. The real
package (`sglang-kernel`, which sglang's wheel requires) is a CUDA build; SGLang's CPU kernels are
a separate build from source that this setup does not use. The functions named here are only
called by speculative decoding and KV-cache moves between pools, which the server we run (one
CPU, no speculative decoding, no hierarchical cache) never does: a normal prefill and decode run
with the native torch code. Each raises NotImplementedError if it is ever called, so a path that
does need a kernel fails loudly instead of computing garbage.

What this stand-in does not provide, on purpose: `torch.ops.sgl_kernel.*`. SGLang takes its
Intel AMX kernels only when `torch.ops.sgl_kernel.convert_weight_packed` exists, so with this
stand-in it uses the native torch layers even on a CPU with AMX. Any other name is an
ImportError, as it is for a missing compiled kernel, so SGLang's own fallbacks apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

__version__ = "0.0.0+standin"

# The names sglang 0.5.23 imports at start-up on the CPU path (found by recording every name
# taken from a permissive probe module while the server started and answered requests).
_IMPORTED_AT_STARTUP = (
    "assign_req_to_token_pool_cpu",  # srt/mem_cache/allocation.py: speculative decoding only
    "copy_all_layer_kv_cache_cpu",  # kernels/ops/kvcache/cache_move.py: KV moves between pools
    "build_tree_kernel_efficient_cpu",  # kernels/ops/speculative/spec_tree.py
    "verify_tree_greedy_cpu",  # kernels/ops/speculative/spec_tree.py
    "assign_draft_cache_locs_contiguous_cpu",  # kernels/ops/speculative/cache_locs.py
    "assign_extend_cache_locs_cpu",  # kernels/ops/speculative/cache_locs.py
    "fill_accept_out_cache_loc_cpu",  # kernels/ops/speculative/eagle.py
    "fill_bonus_tokens_cpu",  # kernels/ops/speculative/eagle.py
)


def _not_available(name: str) -> Callable[..., NoReturn]:
    def kernel(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"sgl_kernel.{name} was called, but this sgl_kernel is the stand-in of "
            "scripts/sglang_standin (no compiled kernels): the CPU server of scripts/sglang-server.sh "
            "does not support the feature that needs it (speculative decoding, KV moves between pools)"
        )

    kernel.__name__ = kernel.__qualname__ = name
    return kernel


for _name in _IMPORTED_AT_STARTUP:
    globals()[_name] = _not_available(_name)

__all__ = list(_IMPORTED_AT_STARTUP)
