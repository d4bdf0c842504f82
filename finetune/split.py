"""Train / held-out split of the BFCL entries the adaptation step uses.

Each entry's place is decided by a seeded hash of its id alone, so the split does not move when a
dataset grows or is read in another order. The lowest-hashing quarter of a dataset is held out
(at least `MIN_HELDOUT` entries where the dataset has that many); those ids are written to
`finetune/heldout.json`, which the benchmark reads: its scenarios come only from held-out
entries, and the dataset builder refuses to write a training trace for any of them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

DATASETS = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "multi_turn_base")
HELDOUT_SHARE = 0.25
MIN_HELDOUT = 50
SPLIT_SEED = "asynclm-cml-v1"
HELDOUT_FILE = Path(__file__).resolve().parent / "heldout.json"


def entry_hash(entry_id: str, seed: str = SPLIT_SEED) -> str:
    return hashlib.sha256(f"{seed}|{entry_id}".encode()).hexdigest()


def heldout_ids(ids: list[str], seed: str = SPLIT_SEED) -> set[str]:
    count = min(len(ids), max(MIN_HELDOUT, math.ceil(HELDOUT_SHARE * len(ids))))
    return set(sorted(ids, key=lambda i: entry_hash(i, seed))[:count])


def split_ids(ids: list[str], seed: str = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(train, held-out), each in the dataset's own order."""
    held = heldout_ids(ids, seed)
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def split_digest(heldout: dict[str, list[str]]) -> str:
    """One hash for the whole split, recorded in the training manifest."""
    return hashlib.sha256(json.dumps(heldout, sort_keys=True).encode()).hexdigest()


def compute_heldout(seed: str = SPLIT_SEED) -> dict[str, list[str]]:
    from webapp.tools.bfcl import dataset

    return {name: split_ids([e["id"] for e in dataset(name)], seed)[1] for name in DATASETS}


def load_heldout(path: Path = HELDOUT_FILE) -> dict[str, set[str]]:
    """The committed held-out ids per dataset (empty sets where the file names none)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: set(ids) for name, ids in data["heldout"].items()}


def write_heldout(path: Path = HELDOUT_FILE, seed: str = SPLIT_SEED) -> dict[str, list[str]]:
    heldout = compute_heldout(seed)
    doc = {"seed": seed, "share": HELDOUT_SHARE, "min": MIN_HELDOUT, "digest": split_digest(heldout),
           "heldout": heldout}
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return heldout


if __name__ == "__main__":
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    django.setup()
    written = write_heldout()
    print(f"{HELDOUT_FILE}: " + ", ".join(f"{name} {len(ids)}" for name, ids in written.items()))
