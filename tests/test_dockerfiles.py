"""What can be checked of the Dockerfiles without a Docker engine (none runs here): sources, entry points,
users, ports, health check."""

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = [REPO / "Dockerfile", REPO / "docker" / "trainer-cpu.Dockerfile", REPO / "docker" / "trainer-cuda.Dockerfile"]


def instructions(path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line[:-1]}" if line.endswith("\\") else f"{current} {line}"
        if not line.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def json_or_shell(arguments):
    import json

    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_the_entry_point_is_one_of_ours(dockerfile):
    steps = instructions(dockerfile)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for keyword, arguments in steps:
        if keyword == "COPY":
            *sources, _ = shlex.split(arguments)
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
    (entry,) = [json_or_shell(a) for k, a in steps if k == "ENTRYPOINT"]
    assert entry[0] in scripts
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} must not run as root"
    assert steps[0][0] == "FROM"


def test_gateway_image_exposes_the_cli_defaults_mounts_models_and_checks_health():
    from scan_serve.cli import main

    steps = instructions(REPO / "Dockerfile")
    defaults = {p.name: p.default for p in main.params}
    exposed = {int(port) for k, a in steps if k == "EXPOSE" for port in a.split()}
    assert exposed == {defaults["port"], defaults["metrics_port"]}
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "SCAN_SERVE_REPOSITORY=/models" in env and "SCAN_SERVE_HOST=0.0.0.0" in env
    assert any(k == "VOLUME" and "/models" in a for k, a in steps)
    (health,) = [a for k, a in steps if k == "HEALTHCHECK"]
    command = json_or_shell(health.split("CMD", 1)[1].strip())
    assert command[:3] == ["python", "-m", "scan_serve.healthcheck"]


def test_healthcheck_module_says_serving_or_not(running_gateway_port):
    ok = subprocess.run([sys.executable, "-m", "scan_serve.healthcheck", f"127.0.0.1:{running_gateway_port}"],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, "-m", "scan_serve.healthcheck", "127.0.0.1:1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


@pytest.fixture
def running_gateway_port(tmp_path):
    from scan_serve.server import ServeSettings, create_server

    running = create_server(ServeSettings(repository=REPO / "model_repository", model_name="fashion_mnist", port=0,
                                          metrics_port=None), log_line=lambda _: None)
    yield running.port
    running.stop(0)
