"""`ArrayHistogram` (a request's values at once) exposes what prometheus_client's Histogram would."""

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scan_serve.metrics import CONFIDENCE_BUCKETS, ArrayHistogram


def samples(registry):
    return sorted((s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
                  for family in text_string_to_metric_families(generate_latest(registry).decode())
                  for s in family.samples)


def test_array_histogram_equals_prometheus_client_histogram_value_for_value():
    disable_created_metrics()
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(500), np.array(CONFIDENCE_BUCKETS), [0.0, 1.0, 2.0]])  # bounds count in
    clusters = rng.integers(0, 4, len(values))
    names = [str(k) for k in range(5)]  # cluster 4 gets no value: its series stays at zero
    ours, reference = CollectorRegistry(), CollectorRegistry()
    array = ArrayHistogram("h", "help", CONFIDENCE_BUCKETS, "cluster", ours)
    array.ensure(*names)
    plain = Histogram("h", "help", ["cluster"], buckets=CONFIDENCE_BUCKETS, registry=reference)
    for k in names:
        plain.labels(k)
    for part in np.array_split(np.arange(len(values)), 7):  # several requests
        array.observe(values[part], clusters[part], names)
        for i in part.tolist():
            plain.labels(names[clusters[i]]).observe(float(values[i]))
    assert samples(ours) == samples(reference)


def test_an_unlabelled_array_histogram_equals_the_reference_too():
    ours, reference = CollectorRegistry(), CollectorRegistry()
    array = ArrayHistogram("s", "help", (0.0, 0.5, 0.9), None, ours)
    plain = Histogram("s", "help", buckets=(0.0, 0.5, 0.9), registry=reference)
    values = np.array([-0.2, 0.0, 0.3, 0.5, 0.95, 0.7])
    array.observe(values)
    for v in values.tolist():
        plain.observe(v)
    assert samples(ours) == samples(reference)


def test_idle_metrics_connections_are_closed_and_scrapes_go_on():
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from scan_serve.metrics import Metrics  # noqa: PLC0415

    server, port = Metrics().serve_http(0, idle_timeout_s=0.5)
    try:
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]  # connect, never send
        for connection in idle:  # each holds a handler thread until the server closes it
            connection.settimeout(5)
            assert connection.recv(1) == b""  # closed by the server after 0.5 s of silence (else: timeout)
            connection.close()
        deadline = time.monotonic() + 5
        while threading.active_count() > threads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert threading.active_count() <= threads
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "scan_requests_total" in text or "scan_images_classified_total" in text
    finally:
        server.shutdown()
        server.server_close()
