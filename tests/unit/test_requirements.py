"""The locks that `make run`, `make test` and the Dockerfile install from agree with the pins."""

import re
from pathlib import Path

import pytest

REQ = Path(__file__).resolve().parents[2] / "requirements"
PIN = re.compile(r"^([A-Za-z0-9_.\[\],-]+)==(\S+)")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            out |= pins(path.parent / line[3:].strip())
        elif match := PIN.match(line.strip()):
            out[normal(match.group(1))] = match.group(2)
    return out


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()


def locked(path: Path) -> dict[str, list[str]]:
    """name -> its hashes; each entry may continue over lines ending in a backslash."""
    text = path.read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        if match := PIN.match(line.strip()):
            out[f"{normal(match.group(1))}=={match.group(2)}"] = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
    return out


@pytest.mark.parametrize("name", ["base", "dev", "bfcl", "sglang-contract"])
def test_it_locks_every_pin_at_its_version_with_hashes(name):
    lock = locked(REQ / f"{name}.lock")
    assert lock, f"{name}.lock is empty"
    for package, version in pins(REQ / f"{name}.txt").items():
        assert f"{package}=={version}" in lock, f"{package}=={version} of {name}.txt is not in {name}.lock"
    for entry, hashes in lock.items():
        assert hashes, f"{entry} in {name}.lock has no hash"


def test_the_installers_use_the_locks_with_hash_checking():
    root = REQ.parent
    for script in (root / "scripts" / "bootstrap.sh", root / "Dockerfile"):
        text = script.read_text()
        assert "--require-hashes" in text and ".lock" in text, script
        assert not re.search(r"-r requirements/\S+\.txt", text), f"{script} installs an unlocked file"
