"""The demo pack: simulated and Python tools so a new user can try async calling at once."""

from __future__ import annotations

DEMO_PACK = "demo"

DEMO_TOOLS = [
    {
        "name": "get_weather", "kind": "simulated", "est_latency_ms": 300, "timeout_s": 5,
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "config": {"latency_ms": {"dist": "uniform", "low": 250, "high": 350},
                   "returns": {"city": "arg:city", "temp_c": "int:-5:35", "sky": "choice:sunny|cloudy|rain|snow"}},
    },
    {
        "name": "get_stock_price", "kind": "simulated", "est_latency_ms": 150, "timeout_s": 5,
        "description": "Latest price of a stock by ticker symbol.",
        "parameters": {"type": "object", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]},
        "config": {"latency_ms": {"dist": "fixed", "value": 150},
                   "returns": {"symbol": "arg:symbol", "price_usd": "float:5:900"}},
    },
    {
        "name": "search_flights", "kind": "simulated", "est_latency_ms": 800, "timeout_s": 10,
        "description": "Cheapest flight between two cities.",
        "parameters": {"type": "object", "properties": {"origin": {"type": "string"},
                                                        "destination": {"type": "string"}},
                       "required": ["origin", "destination"]},
        "config": {"latency_ms": {"dist": "uniform", "low": 600, "high": 1000},
                   "returns": {"price_eur": "int:60:900", "airline": "choice:AirA|BlueJet|Nordwind"}},
    },
    {
        "name": "lookup", "kind": "simulated", "est_latency_ms": 110, "timeout_s": 5,
        "description": "Look up a fact (latency drawn like the paper's tools: 30-500 ms, mean 110 ms).",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        "config": {"latency_ms": {"dist": "lognormal", "mean": 110, "sigma": 0.6, "min": 30, "max": 500},
                   "returns": {"query": "arg:query", "answer_id": "int:1:9999"}},
    },
    {
        "name": "add", "kind": "python", "est_latency_ms": 1, "timeout_s": 5,
        "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"]},
        "config": {"entry_point": "workers.toolbox:add"},
    },
]


def install_demo_pack(ToolPack, Tool) -> None:  # noqa: N803 - historical models from a migration
    pack, _ = ToolPack.objects.update_or_create(
        name=DEMO_PACK, defaults={"description": "Simulated and Python tools to try async calling."})
    for spec in DEMO_TOOLS:
        Tool.objects.update_or_create(pack=pack, name=spec["name"],
                                      defaults={k: v for k, v in spec.items() if k != "name"})
