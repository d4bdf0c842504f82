"""bench.png: mean latency per mode with p10-p90 bars and the bound, one panel per (decoder,
tool-latency profile, dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"sync": "#dd8452", "sync_parallel": "#c9b037", "async": "#2b6cb0"}


def plot(params: dict[str, Any], results: list[dict[str, Any]], path: Path) -> None:
    panels = list(dict.fromkeys((r["label"], r.get("profile") or "paper", r["dataset"]) for r in results))
    columns = min(len(panels), 5)
    grid = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(grid, columns, figsize=(3.2 * columns, 3.9 * grid), squeeze=False, sharey=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (label, profile, dataset) in zip(axes.flat, panels, strict=False):
        rows = [r for r in results if r["label"] == label and (r.get("profile") or "paper") == profile
                and r["dataset"] == dataset and r["latency_ms"]]
        for x, r in enumerate(rows):
            lat = r["latency_ms"]
            ax.bar(x, lat["mean"], color=COLOURS.get(r["mode"], "#888"), width=0.6)
            ax.errorbar(x, lat["p50"], yerr=[[lat["p50"] - lat["p10"]], [lat["p90"] - lat["p50"]]], fmt="o",
                        color="black", capsize=4, markersize=3)
            if r["bound_ms"]:
                ax.plot([x - 0.3, x + 0.3], [r["bound_ms"]] * 2, color="black", linestyle="--", linewidth=1)
            if r.get("bound_standalone_ms"):  # embedded: the bound at the model's standalone decode rate
                ax.plot([x - 0.3, x + 0.3], [r["bound_standalone_ms"]] * 2, color="black", linestyle=":",
                        linewidth=1)
            speed = r["speedup_vs_sync"]
            if speed and r["mode"] != "sync":
                ax.annotate(f"{speed['mean']:.2f}x", (x, lat["mean"]), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(rows)), [r["mode"].replace("_", "\n") for r in rows], fontsize=8)
        ax.set_title(f"{dataset}\n{label}\n{profile} tool latencies", fontsize=8)
        ax.set_ylabel("latency, first -> last token (ms)", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    speeds = ", ".join(f"{p['label']} at {p['token_ms']:g} ms/token" for p in params["parts"] if p["token_ms"])
    standalone = "; dotted: the bound at the standalone decode rate" if any(
        r.get("bound_standalone_ms") for r in results) else ""
    fig.suptitle(f"Bars mean, dots p50 with p10-p90, dashes the bound{standalone}{'; ' + speeds if speeds else ''}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
