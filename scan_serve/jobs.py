"""Fine-tuning jobs: queued in the store, run one at a time in a child process, watched by the gateway.

States: queued -> running -> succeeded | rejected | failed; cancelled from queued or running. The child
writes rejected/failed itself; when it has published a version it exits 0, and the gateway switches to
that version and only then marks the job succeeded.

The gateway never trains in its own process (serving latency stays unaffected); it spawns
`python -m scan_serve.finetune` for the oldest queued job and waits for it. A child that exits
without writing a final state (killed, crashed) leaves its job FAILED with the exit status. When
the gateway starts, a job recorded as running belongs to a gateway that is gone: its process, if
still alive, is stopped, and the job is marked FAILED. A SUCCEEDED job's version is switched to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from scan_serve.process import REPO_ROOT
from scan_serve.store import FINAL_STATES, ImageStore


def _is_finetune_process(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"scan_serve.finetune" in cmdline


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} without finishing the job"


class JobManager:
    def __init__(self, store: ImageStore, repository: Path, model_name: str, device: str,
                 on_success: Callable[[int], None], on_change: Callable[[], None],
                 log: Callable[[str], None]) -> None:
        self.store = store
        self.repository = Path(repository)
        self.model_name = model_name
        self.device = device
        self.on_success = on_success
        self.on_change = on_change
        self.log = log
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen] = None
        self._running_id: Optional[str] = None
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="finetune-jobs", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """Jobs left running by a gateway that is gone end FAILED (their process stopped if it still runs)."""
        for job in self.store.jobs(("running",)):
            if job["new_version"] and not _is_finetune_process(job["pid"]):
                self.store.finish_job(job["id"], "succeeded", f"{job['message']} (switched to at the gateway's start: "
                                      "it serves the newest intact version)")
                continue
            if _is_finetune_process(job["pid"]):
                os.kill(job["pid"], signal.SIGKILL)
                reason = "the gateway restarted while this job ran; its process was stopped"
            else:
                reason = "the job's process is gone (the gateway or the machine stopped while it ran)"
            self.store.finish_job(job["id"], "failed", reason)
            self.log(f"fine-tuning job {job['id']}: marked failed ({reason})")
        self.on_change()

    def submit(self, options: dict[str, Any], base_version: int) -> dict[str, Any]:
        job = self.store.create_job(options, base_version)
        self.on_change()
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.store.job(job_id)
        if job["state"] in FINAL_STATES:
            return job
        job = self.store.finish_job(job_id, "cancelled", "cancelled by an operator")
        with self._lock:
            if self._running_id == job_id and self._process is not None and self._process.poll() is None:
                self._process.kill()
        self.on_change()
        return job

    def _next_queued(self) -> Optional[dict[str, Any]]:
        queued = self.store.jobs(("queued",))
        return queued[-1] if queued else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self._next_queued()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - the job fails, the gateway keeps serving
                self.store.finish_job(job["id"], "failed", f"the gateway could not run the job: {exc}")
            self.on_change()

    def _run(self, job: dict[str, Any]) -> None:
        log_path = self.store.root / "jobs" / f"{job['id']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "scan_serve.finetune", "--store", str(self.store.root), "--job", job["id"],
                   "--repository", str(self.repository), "--model-name", self.model_name, "--device", self.device]
        with open(log_path, "ab") as log_file, self._lock:
            if self._stop.is_set() or self.store.job(job["id"])["state"] != "queued":
                return
            self._process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            self._running_id = job["id"]
            self.store.update_job(job["id"], unless_final=True, state="running", pid=self._process.pid,
                                  started_at=time.time())
        self.log(f"fine-tuning job {job['id']}: running in process {self._process.pid} (log {log_path})")
        self.on_change()
        code = self._process.wait()
        with self._lock:
            self._process, self._running_id = None, None
        done = self.store.job(job["id"])
        if done["state"] not in FINAL_STATES and code == 0 and done["new_version"]:
            message = done["message"]
            try:
                self.on_success(int(done["new_version"]))
            except Exception as exc:  # noqa: BLE001 - the version exists; serving it failed: say so, keep serving
                message += f"; the gateway could not switch to it: {exc}"
            done = self.store.finish_job(job["id"], "succeeded", message)
        elif done["state"] not in FINAL_STATES:
            done = self.store.finish_job(job["id"], "failed", f"the fine-tuning process {_describe_exit(code)} "
                                         f"(log: {log_path})")
        self.log(f"fine-tuning job {job['id']}: {done['state']} - {done['message']}")

    def close(self) -> None:
        """Stop the loop; a running job is stopped and ends FAILED."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            process, running = self._process, self._running_id
        if process is not None and process.poll() is None:
            self.store.finish_job(running, "failed", "the gateway stopped while this job ran")
            process.kill()
        self._thread.join(timeout=30)
