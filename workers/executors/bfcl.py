"""BFCL's stateful tool classes (file system, trading bot, ...), used from the installed
`bfcl-eval` package. A tool names a class and a public method; only the eight classes below can
be named, so nothing typed into the registry chooses what code runs."""

from __future__ import annotations

import copy
import importlib
from functools import cache
from typing import Any

from engine.tools import ToolSpec
from workers.executors.base import StatefulExecutor, ToolError

MODULE_PREFIX = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"

# Class name -> module in bfcl-eval (also the name of its function document).
BFCL_CLASSES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
# BFCL's harness never loads a scenario into these.
STATELESS = frozenset({"MathAPI"})


MAX_PRECISION = 100  # digits a BFCL call may ask mpmath for


@cache
def bfcl_class(name: str) -> type:
    if name not in BFCL_CLASSES:
        raise ToolError(f"unknown BFCL class {name!r} (one of {', '.join(BFCL_CLASSES)})")
    try:
        module = importlib.import_module(f"{MODULE_PREFIX}.{BFCL_CLASSES[name]}")
    except ImportError as exc:
        raise ToolError(f"bfcl-eval is not installed here ({exc}); run scripts/bootstrap.sh") from None
    return getattr(module, name)


def new_instance(class_name: str, initial_config: dict[str, Any] | None) -> Any:
    obj = bfcl_class(class_name)()
    if class_name not in STATELESS:
        # BFCL's loader mutates what it is given.
        obj._load_scenario(copy.deepcopy(initial_config or {}))
    return obj


class BfclExecutor(StatefulExecutor):
    kind = "bfcl"

    def check_config(self, config: dict[str, Any]) -> None:
        cls = bfcl_class(str(config.get("class", "")))
        method = config.get("method")
        if not isinstance(method, str) or method.startswith("_") or not callable(getattr(cls, method, None)):
            raise ToolError(f"{config.get('class')} has no public method {method!r}")
        initial = config.get("initial_config", {})
        if not isinstance(initial, dict):
            raise ToolError("initial_config must be an object (the class's part of a BFCL scenario)")

    def instance_name(self, tool: ToolSpec) -> str:
        # Without a named instance all of a task's tools of one class share one instance.
        return tool.instance or tool.config["class"]

    def run_stateful(self, tool: ToolSpec, args: dict[str, Any], state: Any) -> tuple[Any, Any]:
        self.check_config(tool.config)
        precision = args.get("precision")
        if isinstance(precision, int | float) and not isinstance(precision, bool) and precision > MAX_PRECISION:
            # MathAPI sets mpmath's working digits from it: 10**6 held a worker for minutes.
            raise ToolError(f"precision is at most {MAX_PRECISION} here")
        obj = state if state is not None else new_instance(tool.config["class"], tool.config.get("initial_config"))
        import mpmath

        dps = mpmath.mp.dps
        try:
            return _plain(getattr(obj, tool.config["method"])(**args)), obj
        finally:
            mpmath.mp.dps = dps  # BFCL's MathAPI changes this process-wide setting and leaves it


def _plain(value: Any) -> Any:
    """mpmath's numbers (MathAPI returns them) as JSON numbers."""
    import mpmath

    if isinstance(value, mpmath.mpf):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

