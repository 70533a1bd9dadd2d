"""Coverage-guided fuzzing (atheris, libFuzzer) of the gateway's decode path.

    .venv/bin/python -m tests.serve.fuzz_decode /tmp/fuzz/corpus -artifact_prefix=/tmp/fuzz/ \
        -max_total_time=600 -rss_limit_mb=3072 -timeout=10      # from the repository root

Every input is the `encoded` bytes of one `scan.v1.Image`, prepared exactly as the gateway prepares
it (`scan_serve.inputs.prepare_image`: byte and pixel limits, then `decode_image`). The acceptable
outcomes are a `(1, 28, 28)` uint8 array or `InvalidInput` / `OverLimit`; anything else (another
exception, a wrong shape or dtype, a timeout, memory past the RSS limit) is a finding, which
libFuzzer saves as `crash-*` / `timeout-*` / `oom-*` under the artifact prefix. An empty CORPUS_DIR
is seeded with one valid image per format and every encoded payload of tests/serve/bad_inputs.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["PIL", "scan_serve.inputs", "trainer.data.preprocess"]):
    # PIL imports its format plugins lazily, at the first open: import them here to instrument them too
    from PIL import BmpImagePlugin, GifImagePlugin, ImageFile, JpegImagePlugin, PngImagePlugin  # noqa: F401
    from PIL import WebPImagePlugin  # noqa: F401
    from scan_serve.inputs import prepare_image  # noqa: F401  (instrumented for coverage)
    from trainer.data import preprocess  # noqa: F401

from scan_serve.proto import scan_pb2  # noqa: E402
from tests.serve.bad_inputs import corpus, decodes_or_is_refused, encoded  # noqa: E402


def seeds() -> list[bytes]:
    found = [encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF")]
    for _, request, _, _ in corpus():
        message = scan_pb2.ClassifyRequest()
        try:
            message.ParseFromString(request)
        except Exception:
            continue
        found += [image.encoded for image in message.images if image.WhichOneof("content") == "encoded"]
    return [data for data in found if data]


def main() -> None:
    directories = [a for a in sys.argv[1:] if not a.startswith("-")]
    for directory in directories:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if not any(path.iterdir()):
            for i, data in enumerate(seeds()):
                (path / f"seed-{i:03d}").write_bytes(data)
    atheris.Setup(sys.argv, decodes_or_is_refused)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
