"""scan-export as an operator runs it: a real subprocess, real files, real exit codes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from export.repository import STAGING_PREFIX, ModelRepository

REPO = Path(__file__).resolve().parents[2]


def command(*args):
    return [sys.executable, "-m", "export.cli", *map(str, args)]


def scan_export(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(command(*args), capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def one_line_error(result):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scan-export: error: "), result.stderr
    return lines[0]


def test_export_prints_what_it_published_and_numbers_versions(trained_run, tmp_path):
    repo = tmp_path / "repo"
    first = scan_export(trained_run, "--repository", repo, "--model-name", "fm")
    assert first.returncode == 0, first.stderr
    assert f"fm version 1: {repo}/fm/1" in first.stdout
    assert "parity: max |onnxruntime - PyTorch|" in first.stdout and "10 clusters" in first.stdout
    second = scan_export(trained_run, "--repository", repo, "--model-name", "fm", "--model-version", "next")
    assert second.returncode == 0 and "fm version 2" in second.stdout
    assert ModelRepository(repo).versions("fm") == [1, 2]


def test_bad_arguments_are_one_line_errors(trained_run, tmp_path):
    repo = tmp_path / "repo"
    assert scan_export(trained_run, "--repository", repo, "--model-name", "fm", "--model-version", "3").returncode == 0
    cases = [
        (["--model-version", "3"], "fm version 3 already exists"),
        (["--model-version", "0"], "expected a positive integer or 'next', got '0'"),
        (["--head", "7"], "--head 7: "),
        (["--head", "first"], "expected 'best' or a head number"),
        (["--device", "tpu"], "tpu"),
    ]
    for extra, message in cases:
        assert message in one_line_error(scan_export(trained_run, "--repository", repo, "--model-name", "fm", *extra))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    assert "scan stage has not finished" in one_line_error(
        scan_export(unfinished, "--repository", repo, "--model-name", "fm"))
    (tmp_path / "a-file").write_text("")
    assert "is not writable" in one_line_error(
        scan_export(trained_run, "--repository", tmp_path / "a-file" / "repo", "--model-name", "fm"))
    assert "is not writable" in one_line_error(
        scan_export(trained_run, "--repository", "/proc/scan-repo", "--model-name", "fm"))
    assert ModelRepository(repo).versions("fm") == [3]


def test_an_export_killed_midway_leaves_no_visible_version(trained_run, tmp_path):
    repo = tmp_path / "repo"
    process = subprocess.Popen(command(trained_run, "--repository", repo, "--model-name", "fm"), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    staging = []
    while time.monotonic() < deadline and process.poll() is None:
        staging = list((repo / "fm").glob(f"{STAGING_PREFIX}*/model.onnx")) if (repo / "fm").exists() else []
        if staging:  # the graph is written; the parity check and side files are still to come
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()
    assert staging, "the export finished before it could be killed"
    assert process.returncode == -signal.SIGKILL
    assert ModelRepository(repo).versions("fm") == []
    assert not (repo / "fm" / "1").exists()

    rerun = scan_export(trained_run, "--repository", repo, "--model-name", "fm")
    assert rerun.returncode == 0 and "left by an export that did not finish" in rerun.stdout
    assert sorted(p.name for p in (repo / "fm").iterdir()) == ["1", "config.pbtxt"]
    ModelRepository(repo).load("fm", 1, verify=True)
