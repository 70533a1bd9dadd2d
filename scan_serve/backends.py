"""Inference backends: one interface, `infer(uint8 (N, C, H, W)) -> (probs (N, K), embedding (N, D))`.

* `OnnxRuntimeBackend` (default): the version's model.onnx in this process. Concurrent requests are
  batched together by one worker thread: it takes the first waiting request at once and adds every
  request already queued behind it (up to `max_batch` images), so a lone request never waits and a
  busy gateway runs bigger batches.
* `TritonBackend`: a Triton Inference Server serving the same repository, through `tritonclient.grpc`.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Optional

import numpy as np

from export.session import INPUT_NAME, OUTPUT_NAMES, onnx_session
from scan_serve.errors import BackendUnavailable, StartupError


class Backend:
    name = "backend"

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def healthy(self) -> bool:
        return True

    def graph_shapes(self) -> Optional[dict[str, tuple]]:
        """Per-image shapes the graph declares (`images`: (C, H, W), `probs`: (K,), `embedding`: (D,); a
        dimension it leaves open is a string), or None where the backend does not see the graph."""
        return None

    def close(self) -> None:
        pass


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: str, device: str = "cpu", threads: Optional[int] = None, max_batch: int = 64,
                 max_delay_us: int = 0) -> None:
        try:
            self.session = onnx_session(onnx_path, device, threads)
        except Exception as exc:  # a corrupt or unreadable graph: refuse to start with it
            raise StartupError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
        self.max_batch = max_batch
        self.max_delay = max_delay_us / 1e6
        self._queue: "queue.Queue[Optional[tuple[np.ndarray, Future]]]" = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="onnxruntime-batcher", daemon=True)
        self._closed = False
        self._worker.start()

    def graph_shapes(self) -> dict[str, tuple]:
        return {arg.name: tuple(arg.shape[1:]) for arg in (*self.session.get_inputs(), *self.session.get_outputs())}

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._closed:
            raise BackendUnavailable("the onnxruntime backend is shut down")
        future: Future = Future()
        self._queue.put((images, future))
        return future.result()

    def _take_batch(self) -> Optional[list[tuple[np.ndarray, Future]]]:
        first = self._queue.get()
        if first is None:
            return None
        batch, count = [first], len(first[0])
        deadline = time.monotonic() + self.max_delay
        while count < self.max_batch:
            try:
                timeout = deadline - time.monotonic()
                item = self._queue.get_nowait() if timeout <= 0 else self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # let the loop see the shutdown after this batch
                break
            batch.append(item)
            count += len(item[0])
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                images = batch[0][0] if len(batch) == 1 else np.concatenate([b[0] for b in batch])
                probs, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for part, future in batch:
                end = start + len(part)
                future.set_result((probs[start:end], embedding[start:end]))
                start = end

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join(timeout=10)


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, url: str, model_name: str, version: int, timeout_s: float = 30.0) -> None:
        try:
            import tritonclient.grpc as triton  # noqa: PLC0415 - optional, only for this backend
        except ImportError:
            raise StartupError("tritonclient is not installed: pip install 'tritonclient[grpc]'") from None
        self._triton = triton
        self.url = url
        self.model_name = model_name
        self.version = str(version)
        self.timeout_s = timeout_s
        self.client = triton.InferenceServerClient(url=url)

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        triton = self._triton
        request = triton.InferInput(INPUT_NAME, list(images.shape), "UINT8")
        request.set_data_from_numpy(np.ascontiguousarray(images))
        outputs = [triton.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        try:
            result = self.client.infer(self.model_name, [request], model_version=self.version, outputs=outputs,
                                       client_timeout=self.timeout_s)
        except Exception as exc:  # InferenceServerException: unreachable, model not ready, timeout
            raise BackendUnavailable(f"Triton at {self.url} did not answer for {self.model_name} version "
                                     f"{self.version}: {_short(exc)}") from exc
        return result.as_numpy(OUTPUT_NAMES[0]), result.as_numpy(OUTPUT_NAMES[1])

    def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """Ask Triton to load this version (explicit model control) and wait until it is ready
        (in poll mode Triton finds the new folder by itself within seconds)."""
        try:
            self.client.load_model(self.model_name)
        except Exception:  # noqa: BLE001 - poll mode refuses explicit loads; waiting is all there is to do
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.5)
        raise BackendUnavailable(f"Triton at {self.url} did not make {self.model_name} version {self.version} "
                                 f"ready within {timeout_s:g} s")

    def healthy(self) -> bool:
        try:
            return bool(self.client.is_model_ready(self.model_name, self.version, client_timeout=2.0))
        except Exception:  # noqa: BLE001 - unreachable means not healthy
            return False

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
