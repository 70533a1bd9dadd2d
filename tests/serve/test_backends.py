"""The embedded onnxruntime backend: concurrent requests are batched together and each gets its own answer."""

import threading

import numpy as np
import pytest

from export.session import onnx_session, run_session
from scan_serve.backends import OnnxRuntimeBackend
from scan_serve.errors import BackendUnavailable, StartupError
from tests.serve.conftest import EXAMPLE

ONNX = EXAMPLE / "fashion_mnist" / "1" / "model.onnx"


class RecordingSession:
    """The real onnxruntime session, with the batch size of every call written down."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, names, feeds):
        self.batches.append(len(feeds["images"]))
        return self.session.run(names, feeds)


def test_concurrent_requests_are_batched_and_each_gets_exactly_its_rows():
    backend = OnnxRuntimeBackend(str(ONNX), threads=2, max_batch=64, max_delay_us=50_000)
    backend.session = recording = RecordingSession(backend.session)
    rng = np.random.default_rng(0)
    requests = [rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8) for n in (1, 3, 5, 2, 7, 1, 4, 6)]
    answers = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(i):
        barrier.wait()
        answers[i] = backend.infer(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.close()
    reference = onnx_session(ONNX)
    for images, (probs, embedding) in zip(requests, answers):
        want_probs, want_embedding = run_session(reference, images)
        np.testing.assert_allclose(probs, want_probs, atol=1e-6)
        np.testing.assert_allclose(embedding, want_embedding, atol=1e-6)
    assert sum(recording.batches) == sum(len(r) for r in requests)
    assert len(recording.batches) < len(requests)  # some requests shared a run
    with pytest.raises(BackendUnavailable, match="shut down"):
        backend.infer(requests[0])


def test_a_request_larger_than_max_batch_runs_alone_and_whole():
    backend = OnnxRuntimeBackend(str(ONNX), threads=2, max_batch=4)
    images = np.random.default_rng(1).integers(0, 256, (9, 1, 28, 28), dtype=np.uint8)
    probs, _ = backend.infer(images)
    backend.close()
    np.testing.assert_allclose(probs, run_session(onnx_session(ONNX), images)[0], atol=1e-6)


def test_a_file_that_is_not_a_graph_is_refused_at_start(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(ONNX.read_bytes()[:1000])
    with pytest.raises(StartupError, match="onnxruntime cannot load"):
        OnnxRuntimeBackend(str(broken))
