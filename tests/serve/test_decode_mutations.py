"""Property: any mutation of a valid image either decodes to the model's input or is refused as bad input.

The corpus (bad_inputs.py) names the malformed inputs we thought of; this lets hypothesis make the ones
we did not: bit flips, overwritten header fields (dimensions, lengths, offsets), inserted and deleted
bytes, truncations, in PNG, JPEG, WebP, BMP and GIF. The coverage-guided version of the same
check is tests/serve/fuzz_decode.py (atheris), run for minutes rather than in the suite.
"""

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scan_serve.inputs import InputLimits, prepare_image
from scan_serve.proto import scan_pb2
from tests.serve.bad_inputs import decodes_or_is_refused, encoded

SEEDS = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF")}
INTERESTING = [0, 1, 2, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated_images(draw):
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "word", "insert", "delete", "truncate"]))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "word":  # a header field (width, height, length, offset) set to an edge value
            order = draw(st.sampled_from([">I", "<I", ">H", "<H"]))
            value = draw(st.sampled_from(INTERESTING)) & (0xFFFFFFFF if order.endswith("I") else 0xFFFF)
            word = struct.pack(order, value)
            data[at : at + len(word)] = word
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_any_mutation_of_a_valid_image_decodes_or_is_refused_as_bad_input(data):
    decodes_or_is_refused(data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_are_refused_as_bad_input(data):
    decodes_or_is_refused(data)


def test_the_seeds_are_valid_images_that_decode():
    for fmt, data in SEEDS.items():
        assert prepare_image(scan_pb2.Image(encoded=data), 0, 1, 28, InputLimits()).shape == (1, 28, 28), fmt


@pytest.mark.slow
def test_a_minute_of_coverage_guided_fuzzing_finds_nothing(tmp_path):
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, "-m", "tests.serve.fuzz_decode", str(tmp_path / "corpus"), f"-artifact_prefix={tmp_path}/",
         "-max_total_time=60", "-rss_limit_mb=3072", "-timeout=10"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600,
    )
    findings = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    assert done.returncode == 0 and findings == [], done.stderr[-4000:]
    assert "Done" in done.stderr and len(list((tmp_path / "corpus").iterdir())) > 20  # it ran, from the seeds
