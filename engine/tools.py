"""Tool specifications as the engine sees them (a snapshot taken at submission) and argument
validation against each tool's JSON Schema."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import jsonschema


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    est_latency_ms: int = 100
    timeout_s: float = 10.0
    kind: str = "simulated"
    config: dict[str, Any] = field(default_factory=dict)
    tool_id: int | None = None

    @property
    def instance(self) -> str | None:
        """Calls on one instance of a stateful tool run one at a time, in the order issued."""
        return self.config.get("instance")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolSpec:
        return cls(**data)

    def check(self) -> None:
        """Raise ValueError when the parameter schema is not a valid JSON Schema object schema."""
        try:
            jsonschema.Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        if self.parameters.get("type") != "object":
            raise ValueError('the parameters schema must have "type": "object"')

    def bind(self, positional: list[Any], keywords: dict[str, Any]) -> dict[str, Any]:
        """Map positional arguments onto the schema's properties, in their declared order."""
        names = list(self.parameters.get("properties", {}))
        if len(positional) > len(names):
            raise ValueError(f"{self.name} takes at most {len(names)} arguments, got {len(positional)} positional")
        bound = dict(zip(names, positional, strict=False))
        for key in keywords:
            if key in bound:
                raise ValueError(f"{self.name} got argument {key!r} twice")
        return {**bound, **keywords}

    def validate(self, args: dict[str, Any]) -> None:
        """Raise ValueError with a short, model-readable message when args violate the schema."""
        validator = jsonschema.Draft202012Validator(self.parameters)
        errors = sorted(validator.iter_errors(args), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.path)
            raise ValueError(f"invalid arguments for {self.name}: {(where + ': ') if where else ''}{first.message}")
