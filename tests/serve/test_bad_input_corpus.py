"""Over 200 generated malformed requests against a running scan-serve: each gets its status and a message,
the server stays up, answers good requests in between, and its memory stays bounded."""

from pathlib import Path

import grpc
import pytest

from scan_serve.process import resident_mb, spawn_gateway
from tests.serve.bad_inputs import corpus
from tests.serve.conftest import EXAMPLE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway():
    process, port = spawn_gateway(["--repository", str(EXAMPLE), "--model-name", "fashion_mnist", "--port", "0",
                                   "--no-metrics"], env={"OMP_NUM_THREADS": "2"})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)])
    yield process, channel
    channel.close()
    process.terminate()
    process.wait(timeout=60)




def test_every_malformed_request_gets_its_status_and_the_server_stays_up_with_bounded_memory(gateway):
    from scan_serve.proto import scan_pb2

    process, channel = gateway
    classify = channel.unary_unary("/scan.v1.ScanService/ClassifyUnlabeled")
    good = scan_pb2.ClassifyRequest(images=[scan_pb2.Image(raw=scan_pb2.RawImage(
        data=bytes(range(256)) * 3 + bytes(16), channels=1, height=28, width=28))]).SerializeToString()
    classify(good, timeout=30)
    before = resident_mb(process.pid)
    cases = corpus()
    assert len(cases) >= 200
    wrong = []
    for round_ in range(2):  # twice: memory must not grow with repetition
        for k, (name, request, codes, text) in enumerate(cases):
            try:
                classify(request, timeout=60)
                wrong.append(f"{name}: answered OK")
            except grpc.RpcError as exc:
                if exc.code().name not in codes or text not in (exc.details() or ""):
                    wrong.append(f"{name}: {exc.code().name} {exc.details()!r}, wanted {codes} with {text!r}")
            if k % 25 == 0:
                assert scan_pb2.ClassifyResponse.FromString(classify(good, timeout=30)).model_version == 1
        if round_ == 0:
            after_first = resident_mb(process.pid)
    after = resident_mb(process.pid)
    print(f"gateway RSS: {before:.0f} MB before, {after_first:.0f} MB after one round, {after:.0f} MB after two")
    assert wrong == [], "\n".join(wrong)
    assert process.poll() is None
    assert after - before < 150, f"RSS grew from {before:.0f} to {after:.0f} MB"
    assert after - after_first < 30, f"RSS grew from {after_first:.0f} to {after:.0f} MB on the second round"
