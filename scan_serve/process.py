"""Run `scan-serve` as a child process and learn its port: for scripts, benchmarks and tests.

    process, port = spawn_gateway(["--repository", "model_repository", "--model-name", "fashion_mnist", "--port", "0"])
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
_SERVING = re.compile(r"serving .* on [^ ]+:(\d+) ")


def spawn_gateway(args: Sequence[str], env: Optional[dict[str, str]] = None,
                  echo: Optional[Callable[[str], None]] = None) -> tuple[subprocess.Popen, int]:
    """Start `python -m scan_serve.cli ARGS`; return once it serves, with its gRPC port (`--port 0` works).

    Its log lines go to `echo` (default: dropped) while it runs; a start that fails raises RuntimeError
    with the log.
    """
    process = subprocess.Popen([sys.executable, "-m", "scan_serve.cli", *args], cwd=REPO_ROOT,
                               env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if echo is not None:
            echo(line)
        match = _SERVING.search(line)
        if match:
            def drain() -> None:
                for rest in process.stderr:
                    if echo is not None:
                        echo(rest)

            threading.Thread(target=drain, daemon=True).start()
            return process, int(match.group(1))
    raise RuntimeError(f"scan-serve exited with code {process.wait()} before serving:\n{''.join(lines)}")


def resident_mb(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS from /proc; Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")
