"""BFCL's function documents (from the installed `bfcl-eval` package) as registry packs.

- one pack per entry of the single-turn datasets, e.g. `bfcl/parallel_12`: BFCL does not ship
  code for these functions, so they are simulated tools with the paper's latency distribution
  and a result derived from the arguments;
- one pack per multi-turn class, e.g. `bfcl/GorillaFileSystem`: `bfcl` tools that run BFCL's
  own class, with state kept per instance (workers/executors/bfcl.py).
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from webapp.tools.imports import ImportReport, ToolImportError, import_pack
from workers.executors.bfcl import BFCL_CLASSES

DATASETS = ("parallel", "parallel_multiple", "live_parallel", "live_parallel_multiple")
PACK_PREFIX = "bfcl/"
# The paper's tool latencies: 30-500 ms with a mean of 110 ms.
PAPER_LATENCY_MS = {"dist": "lognormal", "mean": 110, "sigma": 0.6, "min": 30, "max": 500}

_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def bfcl_version() -> str:
    try:
        return version("bfcl-eval")
    except PackageNotFoundError:
        raise ToolImportError("bfcl-eval is not installed; run scripts/bootstrap.sh") from None


def data_dir() -> Path:
    bfcl_version()
    return Path(str(resources.files("bfcl_eval") / "data"))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@cache
def dataset(name: str) -> list[dict[str, Any]]:
    """The entries of a BFCL dataset (`parallel`, `multi_turn_base`, ...)."""
    path = data_dir() / f"BFCL_v4_{name}.json"
    if not path.exists():
        raise ToolImportError(f"no BFCL dataset {name!r} in bfcl-eval {bfcl_version()}")
    return _jsonl(path)


@cache
def class_functions(class_name: str) -> list[dict[str, Any]]:
    if class_name not in BFCL_CLASSES:
        raise ToolImportError(f"unknown BFCL class {class_name!r} (one of {', '.join(BFCL_CLASSES)})")
    return _jsonl(data_dir() / "multi_turn_func_doc" / f"{BFCL_CLASSES[class_name]}.json")


def json_schema(bfcl_params: dict[str, Any]) -> dict[str, Any]:
    """BFCL's parameter notation as JSON Schema: its `dict`, `float`, `tuple` and `any` types
    become object, number, array and unconstrained; its non-standard keys are dropped."""
    schema = copy.deepcopy(bfcl_params)

    def fix(node: Any) -> None:
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind == "any":
            del node["type"]
        elif isinstance(kind, str):
            node["type"] = _TYPES.get(kind, kind)
        node.pop("optional", None)
        if "required" in node and not isinstance(node["required"], list):
            del node["required"]
        for child in (node.get("properties") or {}).values():
            fix(child)
        fix(node.get("items"))
        if isinstance(node.get("additionalProperties"), dict):
            fix(node["additionalProperties"])

    fix(schema)
    schema["type"] = "object"
    schema.setdefault("properties", {})
    return schema


def doc_tool(fn: dict[str, Any], kind: str, config: dict[str, Any], name: str | None = None,
             **extra: Any) -> dict[str, Any]:
    """One BFCL function document as a tool (registry fields, also a ToolSpec dict)."""
    return {"name": name or fn["name"], "description": fn.get("description", ""),
            "parameters": json_schema(fn.get("parameters") or {}), "kind": kind, "config": config, **extra}


def entry_tools(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc_tool(fn, "simulated", {"latency_ms": PAPER_LATENCY_MS}) for fn in entry["function"]]


def class_tools(class_name: str) -> list[dict[str, Any]]:
    return [doc_tool(fn, "bfcl", {"class": class_name, "method": fn["name"]}, est_latency_ms=50)
            for fn in class_functions(class_name)]


def question(entry: dict[str, Any], turn: int = 0) -> str:
    """What the user asks in one turn of a BFCL entry."""
    turns = entry.get("question") or [[]]
    return " ".join(m.get("content", "") for m in turns[turn] if m.get("role") == "user")


def import_bfcl(datasets: list[str], classes: list[str], limit: int | None = None) -> list[ImportReport]:
    source = f"bfcl-eval {bfcl_version()}"
    reports = [
        import_pack(f"{PACK_PREFIX}{name}", class_tools(name), prune=True, source=source,
                    description=f"BFCL multi-turn class {name}: a stateful tool, one instance per task "
                                "(or several, named when the task is submitted).")
        for name in classes
    ]
    for name in datasets:
        for entry in dataset(name)[:limit]:
            reports.append(import_pack(f"{PACK_PREFIX}{entry['id']}", entry_tools(entry), prune=True, source=source,
                                       description=f"BFCL {entry['id']}: {question(entry)}"))
    return reports


INSTANCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")


def instance_specs(instances: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Tool snapshots for named instances of BFCL classes, e.g.
    {"e1": {"class": "GorillaFileSystem", "initial_config": {...}}, "e2": {...}}: every enabled
    tool of pack bfcl/<class>, named e1.cd, e1.ls, ..., each instance with its own state. Returns
    the snapshots and each instance's starting state, which the task keeps once (not per tool)."""
    from django.conf import settings

    from webapp.tools.models import Tool

    if not isinstance(instances, dict):
        raise ToolImportError('instances must be an object: {"e1": {"class": "GorillaFileSystem"}}')
    if len(instances) > settings.ASYNCLM_MAX_INSTANCES:
        raise ToolImportError(f"{len(instances)} instances; a task may have at most {settings.ASYNCLM_MAX_INSTANCES}")
    size = len(json.dumps(instances, ensure_ascii=False))
    if size > settings.ASYNCLM_MAX_INSTANCES_CHARS:
        raise ToolImportError(f"instances are {size} characters of JSON; the limit is "
                              f"{settings.ASYNCLM_MAX_INSTANCES_CHARS}")
    specs: list[dict[str, Any]] = []
    scenarios: dict[str, dict[str, Any]] = {}
    for name, spec in instances.items():
        if not INSTANCE_NAME.match(name):
            raise ToolImportError(f"instance name {name!r}: use letters, digits and _ (at most 32), not starting "
                                  "with a digit")
        if not isinstance(spec, dict) or spec.get("class") not in BFCL_CLASSES:
            raise ToolImportError(f"instance {name}: 'class' must be one of {', '.join(BFCL_CLASSES)}")
        initial = spec.get("initial_config", {})
        if not isinstance(initial, dict):
            raise ToolImportError(f"instance {name}: initial_config must be an object")
        tools = list(Tool.objects.filter(pack__name=f"{PACK_PREFIX}{spec['class']}", enabled=True))
        if not tools:
            raise ToolImportError(f"instance {name}: pack {PACK_PREFIX}{spec['class']} has no enabled tools "
                                  "(run: python manage.py import_bfcl)")
        specs += [t.spec(instance=name).to_dict() for t in tools]
        if initial:
            scenarios[name] = initial
    return specs, scenarios
