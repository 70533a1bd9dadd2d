"""The gateway in front of a real Triton server (nvidia-pytriton's tritonserver serving the exported model.onnx)."""

import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scan_serve.proto import scan_pb2, scan_pb2_grpc
from tests.serve.conftest import start
from tests.serve.test_inputs import encode

pytest.importorskip("pytriton", reason="nvidia-pytriton (ships the tritonserver binary) is not installed")
from tests.triton_harness import TritonProcess  # noqa: E402

pytestmark = pytest.mark.slow  # starts a real tritonserver (about 3 s), twice


def request_of_real_looking_images():
    rng = np.random.default_rng(1)
    images = [scan_pb2.Image(id=f"png-{i}", encoded=encode(rng.integers(0, 256, (40, 32), dtype=np.uint8)))
              for i in range(6)]
    images += [scan_pb2.Image(id="raw", raw=scan_pb2.RawImage(data=bytes(range(256)) * 3 + bytes(16), channels=1,
                                                              height=28, width=28))]
    return scan_pb2.ClassifyRequest(images=images, top_k_prototypes=4, include_probabilities=True)


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_triton_and_embedded_backends_answer_the_same_and_health_follows_triton(repository, stub):
    triton = TritonProcess(repository / "fashion_mnist" / "1", "fashion_mnist", 1)
    triton.start(timeout=90)
    gateway = start(repository, triton_url=triton.url, metrics_port=None, health_interval_s=0.2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            via_triton = scan_pb2_grpc.ScanServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            request = request_of_real_looking_images()
            embedded, behind_triton = stub.ClassifyUnlabeled(request), via_triton.ClassifyUnlabeled(request)
            assert behind_triton.model_version == embedded.model_version == 1
            for a, b in zip(embedded.results, behind_triton.results):
                assert (a.id, a.cluster, a.confident) == (b.id, b.cluster, b.confident)
                np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
                assert [p.prototype_id for p in a.nearest_prototypes] == [p.prototype_id for p in b.nearest_prototypes]
            assert via_triton.GetModelInfo(scan_pb2.GetModelInfoRequest()).backend == "triton"

            def status():
                return health.Check(health_pb2.HealthCheckRequest(service="scan.v1.ScanService")).status

            assert status() == health_pb2.HealthCheckResponse.SERVING
            triton.kill()  # Triton crashes
            assert wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.RpcError) as error:
                via_triton.ClassifyUnlabeled(request)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"Triton at {triton.url} did not answer for fashion_mnist version 1" in error.value.details()
            assert via_triton.GetModelInfo(scan_pb2.GetModelInfoRequest()).model_version == 1  # still answering

            triton.start(timeout=90)  # Triton comes back on the same port
            assert wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING)
            again = via_triton.ClassifyUnlabeled(request)
            assert [r.cluster for r in again.results] == [r.cluster for r in embedded.results]
    finally:
        gateway.stop(1)
        triton.cleanup()
