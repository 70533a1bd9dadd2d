"""A real Triton Inference Server for tests, serving an exported model version.

The ``tritonserver`` binary shipped inside ``nvidia-pytriton`` has the python backend
only (no onnxruntime backend), so the exported ``model.onnx`` is run with onnxruntime
inside a Python callable that ``pytriton.triton.Triton`` binds as a Triton model. To the
client this is an ordinary Triton model: gRPC/HTTP, model name, model version, input
``images`` (UINT8, [-1, C, H, W]) and outputs ``probs`` (FP32, [-1, K]) and ``embedding``
(FP32, [-1, D]).

Two ways to use this file:

* as a script, which serves one model version until SIGTERM/SIGINT (blocking)::

      python tests/triton_harness.py --version-dir model_repository/fashion_mnist/1 \\
          --model-name fashion_mnist --version 1 --grpc-port 8001 --http-port 8000 --metrics-port 8002

* from tests, through :class:`TritonProcess`, which runs that script in a separate
  process (its own process group) so that a test can stop it gracefully (:meth:`stop`),
  crash it (:meth:`kill`) and start it again on the same ports (:meth:`start`)::

      with TritonProcess("model_repository/fashion_mnist/1", "fashion_mnist", 1) as triton:
          client = tritonclient.grpc.InferenceServerClient(triton.url)

Environment traps handled here (see docs/environment.md, "A real Triton Inference Server
on a CPU machine"):

* the python backend stub links Debian's libpython 3.11.2 while the venv runs pyenv's
  3.11.7; without ``LD_LIBRARY_PATH`` pointing at the running interpreter's lib folder
  the model load fails with ``'_thread.RLock' object has no attribute '_recursion_count'``;
* ``PYTRITON_HOME`` is a fresh temporary folder per start (pytriton copies the server
  binaries and writes its model store, sockets and the stub's ``__pycache__`` there; the
  exported version folder is only read);
* every port is explicit and bound to 127.0.0.1;
* a stub that dies while loading can hang the server: :meth:`TritonProcess.start` kills
  the whole process tree after its timeout, and every stop/kill removes the ``/dev/shm``
  regions that tree leaked.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from typing import Self

HARNESS_SCRIPT = pathlib.Path(__file__).resolve()
HOST = "127.0.0.1"
LOG_TAIL_LINES = 60

LOGGER = logging.getLogger("triton_harness")


# --------------------------------------------------------------------------------------
# Server side: the script that runs inside the child process.
# --------------------------------------------------------------------------------------


def _model_shapes(version_dir: pathlib.Path, session) -> dict[str, tuple]:
    """(C, H, W), (K,), (D,) from metadata.json, checked against the ONNX graph."""
    meta_path = version_dir / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    graph_in = {i.name: i.shape for i in session.get_inputs()}
    graph_out = {o.name: o.shape for o in session.get_outputs()}
    if "images" not in graph_in or not {"probs", "embedding"} <= set(graph_out):
        raise ValueError(
            f"{version_dir / 'model.onnx'}: expected input 'images' and outputs 'probs', 'embedding'; "
            f"graph has inputs {sorted(graph_in)} and outputs {sorted(graph_out)}"
        )

    def _static(dims, what):
        dims = tuple(dims)
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError(f"{what}: no static shape in metadata.json nor in the ONNX graph ({dims})")
        return dims

    inp = meta.get("input") or {}
    if all(k in inp for k in ("channels", "height", "width")):
        chw = (int(inp["channels"]), int(inp["height"]), int(inp["width"]))
    else:
        chw = _static(graph_in["images"][1:], "images")
    k = (int(meta["num_clusters"]),) if "num_clusters" in meta else _static(graph_out["probs"][1:], "probs")
    d = (int(meta["embedding_dim"]),) if "embedding_dim" in meta else _static(graph_out["embedding"][1:], "embedding")
    return {"images": chw, "probs": k, "embedding": d}


def make_infer_func(session):
    """The pytriton inference callable: a batch of uint8 NCHW images -> probs, embedding."""
    import numpy as np
    from pytriton.decorators import batch

    @batch
    def infer(images):
        images = np.ascontiguousarray(images, dtype=np.uint8)
        probs, embedding = session.run(["probs", "embedding"], {"images": images})
        return {
            "probs": np.ascontiguousarray(probs, dtype=np.float32),
            "embedding": np.ascontiguousarray(embedding, dtype=np.float32),
        }

    return infer


def serve(
    version_dir: pathlib.Path,
    model_name: str,
    version: int,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    max_batch_size: int = 64,
    threads: int = 1,
    server_log: pathlib.Path | None = None,
) -> int:
    """Serve one exported model version until SIGTERM/SIGINT. Blocking; returns an exit code."""
    import numpy as np
    import onnxruntime as ort
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    # serve() only handles KeyboardInterrupt: turn SIGTERM into one so it stops cleanly
    # (tritonserver gets SIGINT, workspace and shared memory are cleaned).
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    version_dir = pathlib.Path(version_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        (version_dir / "model.onnx").as_posix(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    shapes = _model_shapes(version_dir, session)
    LOGGER.info("serving %s as %s version %d with shapes %s", version_dir, model_name, version, shapes)

    config = TritonConfig(
        grpc_address=HOST,
        grpc_port=grpc_port,
        http_address=HOST,
        http_port=http_port,
        metrics_address=HOST,
        metrics_port=metrics_port,
        log_file=server_log,
    )
    triton = Triton(config=config)
    try:
        triton.bind(
            model_name=model_name,
            model_version=int(version),
            infer_func=make_infer_func(session),
            inputs=[Tensor(name="images", dtype=np.uint8, shape=shapes["images"])],
            outputs=[
                Tensor(name="probs", dtype=np.float32, shape=shapes["probs"]),
                Tensor(name="embedding", dtype=np.float32, shape=shapes["embedding"]),
            ],
            config=ModelConfig(max_batch_size=max_batch_size),
            strict=True,
        )
        triton.serve()  # blocks; returns after stop() on SIGINT/SIGTERM or when tritonserver dies
    except KeyboardInterrupt:  # a signal before serve() reached its own handler
        LOGGER.info("signal received, stopping")
    finally:
        triton.stop()  # idempotent
    LOGGER.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version-dir", required=True, type=pathlib.Path, help="folder with model.onnx, metadata.json")
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--version", type=int, default=None, help="Triton model version (default: metadata 'version' or the folder name)"
    )
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--server-log", type=pathlib.Path, default=None, help="tritonserver --log-file")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"
    )
    version = args.version if args.version is not None else default_version(args.version_dir)
    return serve(
        args.version_dir,
        args.model_name,
        version,
        args.grpc_port,
        args.http_port,
        args.metrics_port,
        max_batch_size=args.max_batch_size,
        threads=args.threads,
        server_log=args.server_log,
    )


def default_version(version_dir: pathlib.Path) -> int:
    """The exported version number: metadata.json 'version', else the folder name."""
    version_dir = pathlib.Path(version_dir)
    meta_path = version_dir / "metadata.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if "version" in meta:
            return int(meta["version"])
    return int(version_dir.resolve().name)


# --------------------------------------------------------------------------------------
# Test side: run the script above in its own process group.
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now (127.0.0.1)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _stat(pid) -> tuple | None:
    """(parent pid, start time, state) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def _process_tree(root: int) -> list[tuple]:
    """(pid, start time) of root and all its descendants, parents first."""
    children: dict[int, list[tuple]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(entry)
            if st is not None:
                children.setdefault(st[0], []).append((int(entry), st[1]))
    root_stat = _stat(root)
    if root_stat is None:
        return []
    tree, todo, seen = [], [(root, root_stat[1])], set()
    while todo:
        pid, start = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        tree.append((pid, start))
        todo.extend(children.get(pid, []))
    return tree


def _alive(procs: list[tuple]) -> list[int]:
    """The pids of these (pid, start time) still running as the same process (no pid reuse, no zombie)."""
    alive = []
    for pid, start in procs:
        st = _stat(pid)
        if st is not None and st[1] == start and st[2] not in ("Z", "X"):
            alive.append(pid)
    return alive


def _shm_files_of(pids: list[int]) -> set[str]:
    """/dev/shm files that these processes have mapped or open."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                        found.add(parts[5].strip().removesuffix(" (deleted)"))
        except OSError:
            pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/dev/shm/"):
                        found.add(target.removesuffix(" (deleted)"))
        except OSError:
            pass
    return found


_TRITON_MODEL_COPY = re.compile(r"^/tmp/folder[A-Za-z0-9]{6}$")
_PYTHON_ENV_DIR = re.compile(r"^python_env_[A-Za-z0-9]{6}$")


def _model_copies_of(pids: list[int]) -> set[str]:
    """The /tmp/folderXXXXXX copies of the model that tritonserver made for these stubs.

    tritonserver (hard-coded /tmp, TMPDIR is ignored) copies a model whose config it got
    over the API into /tmp/folderXXXXXX and removes it on unload; a SIGKILL leaks it.
    The python backend stub gets ``<that folder>/<version>/model.py`` as its first argument.
    """
    found = set()
    for pid in pids:
        try:
            args = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(args) > 1 and args[0].endswith(b"triton_python_backend_stub"):
            folder = os.path.dirname(os.path.dirname(os.fsdecode(args[1])))
            if _TRITON_MODEL_COPY.match(folder):
                found.add(folder)
    return found


def _python_env_dirs() -> dict[str, float]:
    """/tmp/python_env_XXXXXX folders (the python backend makes one per server, hard-coded /tmp)."""
    found = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/tmp"):
            if _PYTHON_ENV_DIR.match(entry.name):
                with contextlib.suppress(OSError):
                    found[entry.path] = entry.stat(follow_symlinks=False).st_mtime
    return found


_LIVE: weakref.WeakSet[TritonProcess] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a server behind when the test process exits."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.kill()


class TritonProcess:
    """A real Triton Inference Server, in a separate process, serving one exported model version.

    ``grpc_port``, ``http_port`` and ``metrics_port`` are picked free when None and then
    kept, so :meth:`start` after :meth:`stop` or :meth:`kill` comes back on the same ports.
    """

    def __init__(
        self,
        version_dir,
        model_name: str,
        version: int | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        max_batch_size: int = 64,
        threads: int = 1,
    ):
        self.version_dir = pathlib.Path(version_dir).resolve()
        if not (self.version_dir / "model.onnx").is_file():
            raise FileNotFoundError(f"no model.onnx in {self.version_dir}")
        self.model_name = model_name
        self.version = int(version) if version is not None else default_version(self.version_dir)
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.max_batch_size = max_batch_size
        self.threads = threads
        self._tmp = pathlib.Path(tempfile.mkdtemp(prefix="triton_harness_"))
        self.log_path = self._tmp / "harness.log"  # the script's stdout/stderr (pytriton, stub start-up)
        self.server_log_path = self._tmp / "tritonserver.log"  # tritonserver --log-file
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._home: pathlib.Path | None = None
        self._tmp_leftovers: set[str] = set()  # tritonserver's own folders in /tmp for this run
        self._lock = threading.Lock()

    # -- public API -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """gRPC address for ``tritonclient.grpc.InferenceServerClient``."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Spawn the server and wait until the model version is ready over gRPC.

        On timeout (or if the server exits first) the whole process tree is killed and a
        RuntimeError carrying the tail of the logs is raised.
        """
        import tritonclient.grpc as grpcclient

        with self._lock:
            if self.is_running():
                raise RuntimeError(f"Triton harness already running (pid {self._proc.pid})")
            self._reset_dirs()
            env = dict(os.environ)
            env["PYTRITON_HOME"] = self._home.as_posix()
            libdir = sysconfig.get_config_var("LIBDIR")
            if libdir and os.path.isdir(libdir):
                # the python stub must load the running interpreter's libpython (see module doc)
                env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
            cmd = [
                sys.executable,
                HARNESS_SCRIPT.as_posix(),
                "--version-dir",
                self.version_dir.as_posix(),
                "--model-name",
                self.model_name,
                "--version",
                str(self.version),
                "--grpc-port",
                str(self.grpc_port),
                "--http-port",
                str(self.http_port),
                "--metrics-port",
                str(self.metrics_port),
                "--max-batch-size",
                str(self.max_batch_size),
                "--threads",
                str(self.threads),
                "--server-log",
                self.server_log_path.as_posix(),
            ]
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (held for the child's lifetime)
            self._log_file.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
            self._log_file.flush()
            env_dirs_before = _python_env_dirs()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmp.as_posix(),
                start_new_session=True,  # own process group: kill() cannot hit the test process
            )
            _LIVE.add(self)

        deadline = time.monotonic() + timeout
        error = "timed out"
        with contextlib.closing(grpcclient.InferenceServerClient(self.url)) as client:
            while True:
                if self._proc.poll() is not None:
                    error = f"harness exited with code {self._proc.returncode}"
                    break
                self._note_tmp_leftovers(env_dirs_before)
                with contextlib.suppress(Exception):
                    if client.is_model_ready(self.model_name, str(self.version)):
                        self._note_tmp_leftovers(env_dirs_before)
                        return
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(
            f"Triton harness for {self.model_name} version {self.version} on {self.url} not ready "
            f"after {timeout:.0f} s ({error}).\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 20) -> None:
        """Graceful stop: SIGTERM, wait, then SIGKILL whatever is left; clean leaked /dev/shm."""
        self._end(grace=timeout)

    def kill(self) -> None:
        """Crash: SIGKILL the whole process tree at once (harness, tritonserver, python stub)."""
        self._end(grace=None)

    def _end(self, grace: float | None) -> None:
        """SIGTERM and wait up to `grace` seconds first (None: no grace), then SIGKILL the tree and clean up."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            tree = _process_tree(proc.pid) if proc.poll() is None else []
            shm = _shm_files_of([pid for pid, _ in tree])
            self._tmp_leftovers |= _model_copies_of([pid for pid, _ in tree])
            if grace is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
            # anything of that tree still alive (a hung tritonserver or stub) is killed
            self._kill_pids(_alive(tree))
            self._finish(proc, tree, shm)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for title, path in (("harness log", self.log_path), ("tritonserver log", self.server_log_path)):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {title} ({path}), last {len(text)} lines:\n" + "\n".join(text))
        return "\n".join(parts) or "(no logs)"

    def cleanup(self) -> None:
        """Stop if running and remove the temporary folder (logs included)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"TritonProcess({self.model_name!r}, version={self.version}, url={self.url!r}, {state})"

    # -- internals --------------------------------------------------------------------

    def _note_tmp_leftovers(self, env_dirs_before: dict[str, float]) -> None:
        """Remember the /tmp folders that this run's tritonserver made (removed by stop/kill)."""
        if self._proc is None:
            return
        self._tmp_leftovers |= _model_copies_of([pid for pid, _ in _process_tree(self._proc.pid)])
        # python_env_XXXXXX is named nowhere: take the ones that appeared since the spawn
        # (only ever removed while empty, see _finish)
        self._tmp_leftovers |= set(_python_env_dirs()) - set(env_dirs_before)

    def _reset_dirs(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
        self._home = pathlib.Path(tempfile.mkdtemp(prefix="pytriton_home_", dir=self._tmp))
        with contextlib.suppress(OSError):
            self.server_log_path.unlink()

    @staticmethod
    def _kill_pids(pids: list[int]) -> None:
        """SIGKILL these pids and their process groups, never the caller's own group."""
        own_pid, own_pgid = os.getpid(), os.getpgrp()
        groups = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        for pgid in groups - {own_pgid}:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in pids:
            if pid != own_pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _finish(self, proc: subprocess.Popen, tree: list[tuple], shm: set[str]) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        # wait until the killed grandchildren (tritonserver, stub) are really gone, so that
        # a start() right after finds the ports and shared memory free
        deadline = time.monotonic() + 10
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.02)
        # python-backend regions are named after the harness pid (pytriton's shm prefix)
        shm |= {p.as_posix() for p in pathlib.Path("/dev/shm").glob(f"pytrtion{proc.pid}-*")}
        for path in shm:
            with contextlib.suppress(OSError):
                os.unlink(path)
        for folder in self._tmp_leftovers:
            if _TRITON_MODEL_COPY.match(folder):
                shutil.rmtree(folder, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # python_env_*: only while empty, never anybody's content
        self._tmp_leftovers = set()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
        self._proc = None
        _LIVE.discard(self)


if __name__ == "__main__":
    sys.exit(main())
