"""Python tools: an entry point `package.module:function` from an allow-listed module."""

from __future__ import annotations

import importlib
from typing import Any

from django.conf import settings

from engine.tools import ToolSpec
from workers.executors.base import CallContext, Executor, ToolError


def resolve(entry_point: str):
    module_name, _, attr = entry_point.partition(":")
    allowed = settings.ASYNCLM_PYTHON_TOOL_MODULES
    if not attr or not any(module_name == m or module_name.startswith(m + ".") for m in allowed):
        raise ToolError(f"entry point {entry_point!r} is not in an allow-listed module ({', '.join(allowed)})")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ToolError(f"entry point {entry_point!r} cannot be loaded: {exc}") from exc
    if not callable(func):
        raise ToolError(f"entry point {entry_point!r} is not callable")
    return func


class PythonExecutor(Executor):
    kind = "python"

    def check_config(self, config: dict[str, Any]) -> None:
        resolve(str(config.get("entry_point", "")))

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        return resolve(str(tool.config.get("entry_point", "")))(**args)
