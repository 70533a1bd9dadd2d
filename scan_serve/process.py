"""Run `scan-serve` as a child process and learn its port: for scripts, benchmarks and tests.

    process, port = spawn_gateway(["--repository", "model_repository", "--model-name", "fashion_mnist", "--port", "0"])
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def spawn_gateway(args: Sequence[str], env: Optional[dict[str, str]] = None,
                  echo: Optional[Callable[[str], None]] = None, timeout_s: float = 300.0) -> tuple[subprocess.Popen, int]:
    """Start `python -m scan_serve.cli ARGS`; return once it serves, with its gRPC port (`--port 0` works).

    The port comes from the gateway's `--ready-file` (JSON), not from its log. Its log lines go to
    `echo` (default: dropped) while it runs; a start that fails raises RuntimeError with the log.
    """
    ready = Path(tempfile.mkdtemp(prefix="scan-serve-")) / "ready.json"
    process = subprocess.Popen([sys.executable, "-m", "scan_serve.cli", *args, "--ready-file", str(ready)],
                               cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read_log() -> None:
        for line in process.stderr:
            lines.append(line)
            if echo is not None:
                echo(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
            code = process.wait()
            reader.join(timeout=10)
            raise RuntimeError(f"scan-serve exited with code {code} before serving:\n{''.join(lines)}")
        time.sleep(0.02)
    return process, int(json.loads(ready.read_text())["port"])


def resident_mb(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS from /proc; Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")
