"""Every command in the README is one the project's CLIs accept, every file it names exists, and every
Python snippet compiles. (Commands for docker, grpcurl and tritonserver cannot run here; the README says so.)"""

import re
import shlex
from pathlib import Path

import click
import pytest

from export.cli import main as scan_export
from scan_serve.cli import main as scan_serve
from trainer.cli import main as scan_train
from trainer.config import load_config

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CLIS = {"scan-train": scan_train, "scan-export": scan_export, "scan-serve": scan_serve}


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands():
    found = []
    for block in blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if command and not command.startswith("#"):
                found.append(command)
    return found


def cli_part(command):
    """The scan-train/scan-export/scan-serve command inside `command` (after `torchrun ... --no-python`)."""
    words = shlex.split(command)
    if words[0].rsplit("/", 1)[-1] == "torchrun":
        programs = [i for i, w in enumerate(words) if w.rsplit("/", 1)[-1] in CLIS]
        words = words[programs[0]:] if programs else words
    return words


def test_the_readme_shows_commands_and_snippets():
    names = [shlex.split(c)[0].rsplit("/", 1)[-1] for c in commands()]
    assert {"quickstart.sh", "test.sh", "scan-train", "scan-export", "scan-serve", "torchrun"} <= set(names)
    assert len(blocks("python")) >= 2


@pytest.mark.parametrize("command", [c for c in commands() if cli_part(c)[0].rsplit("/", 1)[-1] in CLIS])
def test_each_cli_command_parses_with_the_real_cli(command):
    if "[" in command:  # a synopsis with [optional] parts, not a command
        pytest.skip("synopsis")
    program, *args = cli_part(command)
    name = program.rsplit("/", 1)[-1]
    CLIS[name].make_context(name, list(args))  # raises click.UsageError on an unknown option or a bad value
    if name == "scan-train":
        config = args[0]
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        load_config(REPO / config, overrides)  # the preset exists and the overrides name real keys


@pytest.mark.parametrize("command", [c for c in commands() if shlex.split(c)[0].startswith(("scripts/", ".venv/bin/python"))])
def test_each_script_it_runs_exists(command):
    parts = shlex.split(command)
    script = parts[1] if parts[0].endswith("python") else parts[0]
    assert (REPO / script).exists(), script


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_each_python_snippet_compiles(index):
    compile(blocks("python")[index], f"README python block {index}", "exec")


def test_repository_paths_it_names_exist():
    for path in set(re.findall(r"`((?:configs|scripts|benchmarks|docker|protos|model_repository)/[\w./-]+)`", README)):
        if "<" in path or "*" in path:
            continue
        assert (REPO / path).exists(), f"README names {path}, which does not exist"


def test_click_usage_errors_are_what_the_parse_test_relies_on():
    with pytest.raises(click.UsageError):
        scan_serve.make_context("scan-serve", ["--repository", "x", "--model-name", "y", "--no-such-flag"])
