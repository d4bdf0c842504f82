"""docker-compose.yml cannot run here (no Docker engine); check that what it runs exists."""

import importlib
import importlib.util
import shlex
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("web", "engine", "worker", "engine-gpu")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_segments(command) -> list[list[str]]:
    args = command if isinstance(command, list) else shlex.split(command)
    if args[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in args[2].split("&&")]
    return [args]


def check_exists(args: list[str]) -> None:
    if args[:2] == ["python", "manage.py"]:
        assert args[2] in get_commands(), f"no management command {args[2]!r}"
    elif args[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(args[2]) is not None, f"no module {args[2]!r}"
    elif args[0] == "daphne":
        module, attr = args[-1].split(":")
        assert hasattr(importlib.import_module(module), attr), f"no ASGI app {args[-1]!r}"
    elif args[0] == "celery":
        app = importlib.import_module(args[args.index("-A") + 1])
        assert hasattr(app, "celery_app") and args[args.index("-A") + 2] == "worker"
    else:
        raise AssertionError(f"unexpected command {args!r}")


def test_it_has_the_services_of_the_design(compose):
    services = compose["services"]
    assert {"redis", "web", "engine", "worker", "sglang"} <= set(services)
    assert services["sglang"]["profiles"] == ["gpu"]
    assert services["sglang"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "/health" in " ".join(services["sglang"]["healthcheck"]["test"])
    gpu_engine = services["engine-gpu"]
    assert gpu_engine["profiles"] == ["gpu"] and gpu_engine["depends_on"]["sglang"]["condition"] == "service_healthy"
    assert gpu_engine["environment"]["ASYNCLM_SGLANG_URL"] == "http://sglang:30000"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_share_the_web_image_and_run_real_commands(compose, service):
    spec = compose["services"][service]
    assert spec["image"] == "asynclm-web" and spec["build"] == "."
    for args in command_segments(spec["command"]):
        check_exists(args)


def test_the_dockerfile_default_command_exists():
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD"))
    check_exists(yaml.safe_load(cmd[3:]))


def test_the_procfile_runs_the_same_commands():
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name == "redis":
            assert (ROOT / command.strip()).exists()
            continue
        args = shlex.split(command.replace("${ASYNCLM_PORT:-8000}", "8000"))
        assert args[0] == "scripts/supervise.sh", f"{name} is not restarted after a crash"
        check_exists(args[1:])


def test_supervise_starts_a_crashed_command_again_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import time

    marker, second = tmp_path / "crashed-once", tmp_path / "second-run"
    script = f"if [ -f {marker} ]; then touch {second}; exec sleep 300; else touch {marker}; exit 3; fi"
    proc = subprocess.Popen([str(ROOT / "scripts" / "supervise.sh"), "bash", "-c", script],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not second.exists():
        assert time.monotonic() < deadline, "the command was not started again"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)  # it stops, and does not start the command again (TimeoutExpired otherwise)
    assert "exited with status 3; starting it again in 1 s" in proc.stderr.read()


def test_every_service_comes_back_after_a_crash_and_only_the_web_port_is_published(compose):
    services = compose["services"]
    assert all(s.get("restart") == "unless-stopped" for s in services.values()), \
        [name for name, s in services.items() if s.get("restart") != "unless-stopped"]
    assert [name for name, s in services.items() if s.get("ports")] == ["web"]


def test_production_settings_pass_the_deploy_check_behind_tls():
    import os
    import secrets
    import subprocess
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings.production",
           "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_ALLOWED_HOSTS": "asynclm.example.org"}
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # Without TLS in front (a local trial), the same settings say what they give up.
    env["ASYNCLM_BEHIND_TLS"] = "false"
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "security.W008" in done.stdout + done.stderr


def test_the_sglang_image_is_the_release_the_backend_speaks_to(compose):
    contract = (ROOT / "requirements" / "sglang-contract.txt").read_text()
    version = next(line.split("==")[1].strip() for line in contract.splitlines() if line.startswith("sglang=="))
    assert compose["services"]["sglang"]["image"].endswith(f"lmsysorg/sglang:v{version}}}")


def test_the_sglang_server_honours_seeds_and_the_engine_checks_its_model_name(compose):
    services = compose["services"]
    command = services["sglang"]["command"]
    assert "--enable-deterministic-inference" in command
    served = command[command.index("--served-model-name") + 1]
    env = services["engine-gpu"]["environment"]
    mapping = dict(item.split("=", 1) for item in env["ASYNCLM_SGLANG_SERVED"].split(","))
    assert mapping == {env["ASYNCLM_SGLANG_MODELS"]: served}


def test_every_way_of_starting_a_worker_runs_it_the_same_way(compose):
    from webapp.core.processes import WORKER_ARGS

    procfile = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:"))
    command = compose["services"]["worker"]["command"]
    for arg in WORKER_ARGS:
        assert arg in procfile.split() and arg in command, arg
