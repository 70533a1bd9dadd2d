"""Incremental fine-tuning through the gateway: the store, jobs, the safety gate, version switches, faults."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from export.repository import ModelRepository
from scan_serve.process import spawn_gateway
from scan_serve.proto import scan_pb2, scan_pb2_grpc
from scan_serve.store import ImageStore, StoreFull
from tests.fmnist import needs_fashion_mnist
from tests.serve.conftest import EXAMPLE, TOKEN, png, start

OPERATOR = [("authorization", f"Bearer {TOKEN}")]
REPO = Path(__file__).resolve().parents[2]
FINAL = {scan_pb2.JOB_STATE_SUCCEEDED, scan_pb2.JOB_STATE_REJECTED, scan_pb2.JOB_STATE_FAILED,
         scan_pb2.JOB_STATE_CANCELLED}


@pytest.fixture
def fresh_repository(tmp_path):
    shutil.copytree(EXAMPLE / "fashion_mnist", tmp_path / "repo" / "fashion_mnist")
    return tmp_path / "repo"


@pytest.fixture
def served(fresh_repository, tmp_path):
    running = start(fresh_repository, store=tmp_path / "store", metrics_port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, scan_pb2_grpc.ScanServiceStub(channel)
    channel.close()
    running.stop(1)


def submit(stub, arrays, chunk=200, ids=None):
    messages = [scan_pb2.SubmitImagesRequest(images=[
        scan_pb2.Image(id=ids[i] if ids else f"img-{i}", encoded=png(arrays[i]))
        for i in range(start, min(start + chunk, len(arrays)))]) for start in range(0, len(arrays), chunk)]
    return stub.SubmitImages(iter(messages), metadata=OPERATOR)


def wait_for_job(stub, job_id, timeout=300, until=FINAL):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetFineTuneJob(scan_pb2.GetFineTuneJobRequest(id=job_id), metadata=OPERATOR)
        if job.state in until:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout} s (last: {job})")


def classify_version(stub):
    raw = scan_pb2.RawImage(data=bytes(784), channels=1, height=28, width=28)
    return stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=[scan_pb2.Image(raw=raw)])).model_version


# ---------------------------------------------------------------------- the store


def test_store_dedups_keeps_everything_across_reopening_and_refuses_when_full(tmp_path):
    store = ImageStore(tmp_path / "store", max_images=5, max_bytes=10_000)
    result = store.add([(b"a" * 100, "a"), (b"b" * 100, "b"), (b"a" * 100, "a again")])
    assert (result.stored, result.duplicates, result.total) == (2, 1, 2)
    assert store.add([(b"b" * 100, "b")]).duplicates == 1
    reopened = ImageStore(tmp_path / "store", max_images=5, max_bytes=10_000)
    assert reopened.count() == 2
    assert [reopened.read(i) for i in reopened.images()] == [b"b" * 100, b"a" * 100]  # most recent first
    with pytest.raises(StoreFull, match="holds 2 of at most 5 images; 4 more do not fit"):
        reopened.add([(bytes([k]) * 10, str(k)) for k in range(4)])
    with pytest.raises(StoreFull, match="holds 200 of at most 10000 bytes"):
        reopened.add([(b"c" * 9_900, "c")])
    assert reopened.count() == 2  # a refused submission stores nothing
    assert sorted(p.name for p in (tmp_path / "store" / "objects").rglob("*") if p.is_file()) == sorted(
        i.sha256 for i in reopened.images())


def test_job_records_take_only_the_first_final_word(tmp_path):
    store = ImageStore(tmp_path)
    job = store.create_job({"epochs": 1}, base_version=1)
    assert job["state"] == "queued" and job["options"] == {"epochs": 1}
    store.finish_job(job["id"], "cancelled", "by hand")
    assert store.finish_job(job["id"], "failed", "too late")["state"] == "cancelled"
    assert store.update_job(job["id"], unless_final=True, state="running")["state"] == "cancelled"


# ---------------------------------------------------------------------- the RPCs


@needs_fashion_mnist
def test_operator_rpcs_need_the_token_and_check_what_they_get(served, fashion_test):
    running, stub = served
    images, _ = fashion_test
    request = scan_pb2.SubmitImagesRequest(images=[scan_pb2.Image(encoded=png(images[0]))])
    calls = [lambda md: stub.SubmitImages(iter([request]), metadata=md),
             lambda md: stub.StartFineTune(scan_pb2.StartFineTuneRequest(), metadata=md),
             lambda md: stub.ListFineTuneJobs(scan_pb2.ListFineTuneJobsRequest(), metadata=md),
             lambda md: stub.GetFineTuneJob(scan_pb2.GetFineTuneJobRequest(id="x"), metadata=md),
             lambda md: stub.CancelFineTuneJob(scan_pb2.CancelFineTuneJobRequest(id="x"), metadata=md)]
    for call in calls:
        for metadata in (None, [("authorization", "Bearer wrong")]):
            with pytest.raises(grpc.RpcError) as error:
                call(metadata)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED

    first = submit(stub, images[:30])
    assert (first.received, first.stored, first.duplicates, first.stored_total) == (30, 30, 0, 30)
    again = submit(stub, images[:40])
    assert (again.stored, again.duplicates, again.stored_total) == (10, 30, 40)
    bad = scan_pb2.SubmitImagesRequest(images=[scan_pb2.Image(id="cut", encoded=png(images[1])[:60])])
    with pytest.raises(grpc.RpcError) as error:
        stub.SubmitImages(iter([bad]), metadata=OPERATOR)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image 0 (id 'cut')" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.StartFineTune(scan_pb2.StartFineTuneRequest(), metadata=OPERATOR)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds 40 images; fine-tuning needs at least 100" in error.value.details()
    for bad, option in ((scan_pb2.StartFineTuneRequest(augment="wild"), "augment must be"),
                        (scan_pb2.StartFineTuneRequest(epochs=1001), "epochs must be within 1..1000"),
                        (scan_pb2.StartFineTuneRequest(threshold=1.5), "threshold must be within (0, 1)"),
                        (scan_pb2.StartFineTuneRequest(learning_rate=float("inf")), "learning_rate must be within"),
                        (scan_pb2.StartFineTuneRequest(max_images=1), "max_images must be 0 (every stored image) "
                                                                     "or at least 100 (10 per cluster")):
        with pytest.raises(grpc.RpcError) as error:
            stub.StartFineTune(bad, metadata=OPERATOR)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and option in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.GetFineTuneJob(scan_pb2.GetFineTuneJobRequest(id="nope"), metadata=OPERATOR)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:  # a huge id is not echoed whole (the reply would pass the limit)
        stub.CancelFineTuneJob(scan_pb2.CancelFineTuneJobRequest(id="x" * 100_000), metadata=OPERATOR)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "(100000 characters)" in error.value.details()
    assert classify_version(stub) == 1


def test_fine_tuning_is_off_without_a_store(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ListFineTuneJobs(scan_pb2.ListFineTuneJobsRequest(), metadata=OPERATOR)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--store" in error.value.details()


def test_a_full_store_answers_resource_exhausted(fresh_repository, tmp_path, fashion_test):
    images, _ = fashion_test
    running = start(fresh_repository, store=tmp_path / "small", store_max_images=20, metrics_port=None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = scan_pb2_grpc.ScanServiceStub(channel)
            assert submit(stub, images[:15]).stored_total == 15
            with pytest.raises(grpc.RpcError) as error:
                submit(stub, images[15:30])
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "holds 15 of at most 20 images" in error.value.details()
            assert classify_version(stub) == 1
    finally:
        running.stop(1)


# ---------------------------------------------------------------------- jobs end to end


@pytest.mark.slow
@needs_fashion_mnist
def test_a_job_publishes_a_version_that_answers_next_and_no_request_fails_during_the_switch(served, fashion_test):
    running, stub = served
    images, _ = fashion_test
    assert submit(stub, images[:2000]).stored_total == 2000
    seen, errors, stop = [[] for _ in range(4)], [], threading.Event()

    def hammer(k):
        while not stop.is_set():
            try:
                seen[k].append(classify_version(stub))
            except grpc.RpcError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    job = stub.StartFineTune(scan_pb2.StartFineTuneRequest(epochs=2), metadata=OPERATOR)
    assert job.state == scan_pb2.JOB_STATE_QUEUED and job.base_version == 1
    done = wait_for_job(stub, job.id)
    assert classify_version(stub) == 2  # the next request after SUCCEEDED answers from the new version
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()

    assert done.state == scan_pb2.JOB_STATE_SUCCEEDED, done.message
    assert done.new_version == 2 and done.images == 2000 and "published fashion_mnist version 2" in done.message
    assert errors == []
    for versions in seen:  # each client saw version 1, then version 2, never back
        assert versions == sorted(versions) and set(versions) <= {1, 2}
    assert any(2 in v for v in seen) and any(1 in v for v in seen)
    version = ModelRepository(running.gateway.settings.repository).load("fashion_mnist", 2, verify=True)
    assert version.metadata["source"]["fine_tune_job"] == job.id
    assert version.metadata["source"]["base_version"] == 1
    assert stub.GetModelInfo(scan_pb2.GetModelInfoRequest()).model_version == 2
    prototypes = stub.GetPrototypes(scan_pb2.GetPrototypesRequest(cluster=0)).prototypes
    assert prototypes and prototypes[0].source.startswith("store:")
    listed = stub.ListFineTuneJobs(scan_pb2.ListFineTuneJobsRequest(), metadata=OPERATOR).jobs
    assert [j.id for j in listed] == [job.id]
    metrics = __import__("urllib.request").request.urlopen(
        f"http://127.0.0.1:{running.metrics_port}/metrics").read().decode()
    assert "scan_version_switches_total 1.0" in metrics
    assert 'scan_finetune_jobs{state="succeeded"} 1.0' in metrics and "scan_stored_images 2000.0" in metrics
    assert 'scan_model_info{backend="onnxruntime",model="fashion_mnist",version="2"} 1.0' in metrics
    assert 'version="1"' not in metrics


@pytest.mark.slow
@needs_fashion_mnist
def test_a_job_on_data_made_to_collapse_is_rejected_and_the_old_version_keeps_serving(served, fashion_test):
    running, stub = served
    images, labels = fashion_test
    # two classes only (trousers and bags) and a learning rate 100x the preset's: the clusters collapse
    two_classes = images[:4000][np.isin(labels[:4000], (1, 8))]
    submit(stub, two_classes)
    job = stub.StartFineTune(scan_pb2.StartFineTuneRequest(epochs=5, learning_rate=0.01), metadata=OPERATOR)
    done = wait_for_job(stub, job.id)
    assert done.state == scan_pb2.JOB_STATE_REJECTED, done.message
    assert any("populated clusters fell" in f or "entropy fell" in f for f in done.gate_failures)
    assert done.message.startswith("the safety gate refused the fine-tuned model: ")
    assert '"baseline"' in done.gate_json and done.new_version == 0
    assert ModelRepository(running.gateway.settings.repository).versions("fashion_mnist") == [1]
    assert classify_version(stub) == 1


@pytest.mark.slow
@needs_fashion_mnist
def test_kill_9_of_the_job_process_fails_the_job_publishes_nothing_and_serving_goes_on(served, fashion_test, tmp_path):
    running, stub = served
    images, _ = fashion_test
    submit(stub, images[:2000])
    job = stub.StartFineTune(scan_pb2.StartFineTuneRequest(epochs=200), metadata=OPERATOR)
    wait_for_job(stub, job.id, until={scan_pb2.JOB_STATE_RUNNING})
    store = ImageStore(tmp_path / "store")
    deadline = time.monotonic() + 120
    while store.job(job.id)["progress"] < 0.05 and time.monotonic() < deadline:  # the first epoch is done
        time.sleep(0.1)
    os.kill(store.job(job.id)["pid"], signal.SIGKILL)
    done = wait_for_job(stub, job.id)
    assert done.state == scan_pb2.JOB_STATE_FAILED
    assert "was killed by SIGKILL" in done.message
    model_dir = running.gateway.settings.repository / "fashion_mnist"
    assert ModelRepository(running.gateway.settings.repository).versions("fashion_mnist") == [1]
    assert not any(p.name.startswith(".staging") for p in model_dir.iterdir())
    assert classify_version(stub) == 1


@pytest.mark.slow
@needs_fashion_mnist
def test_cancelling_a_running_job_stops_it(served, fashion_test):
    running, stub = served
    images, _ = fashion_test
    submit(stub, images[:1000])
    job = stub.StartFineTune(scan_pb2.StartFineTuneRequest(epochs=200), metadata=OPERATOR)
    wait_for_job(stub, job.id, until={scan_pb2.JOB_STATE_RUNNING})
    cancelled = stub.CancelFineTuneJob(scan_pb2.CancelFineTuneJobRequest(id=job.id), metadata=OPERATOR)
    assert cancelled.state == scan_pb2.JOB_STATE_CANCELLED
    time.sleep(1)
    assert wait_for_job(stub, job.id).state == scan_pb2.JOB_STATE_CANCELLED
    assert ModelRepository(running.gateway.settings.repository).versions("fashion_mnist") == [1]


@pytest.mark.slow
@needs_fashion_mnist
def test_a_gateway_killed_mid_job_restarts_with_its_images_and_job_records(fresh_repository, tmp_path, fashion_test):
    repository = fresh_repository
    images, _ = fashion_test
    store = tmp_path / "store"

    def gateway():
        process, port = spawn_gateway(["--repository", str(repository), "--model-name", "fashion_mnist", "--port", "0",
                                       "--no-metrics", "--store", str(store), "--token-file", str(token_file)])
        return process, grpc.insecure_channel(f"127.0.0.1:{port}")

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    process, channel = gateway()
    stub = scan_pb2_grpc.ScanServiceStub(channel)
    assert submit(stub, images[:500]).stored_total == 500
    job = stub.StartFineTune(scan_pb2.StartFineTuneRequest(epochs=500), metadata=OPERATOR)
    wait_for_job(stub, job.id, until={scan_pb2.JOB_STATE_RUNNING})
    pid = ImageStore(store).job(job.id)["pid"]
    process.send_signal(signal.SIGKILL)  # the gateway dies; its job process lives on in its own session
    process.wait()
    channel.close()
    assert Path(f"/proc/{pid}").exists()

    process, channel = gateway()
    try:
        stub = scan_pb2_grpc.ScanServiceStub(channel)
        (record,) = stub.ListFineTuneJobs(scan_pb2.ListFineTuneJobsRequest(), metadata=OPERATOR).jobs
        assert record.id == job.id and record.state == scan_pb2.JOB_STATE_FAILED
        assert "the gateway restarted while this job ran" in record.message
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        again = submit(stub, images[:500])
        assert (again.stored, again.duplicates, again.stored_total) == (0, 500, 500)  # every image is still there
        assert ModelRepository(repository).versions("fashion_mnist") == [1]
        assert classify_version(stub) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        channel.close()
