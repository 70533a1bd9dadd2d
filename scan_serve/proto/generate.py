"""Regenerate the committed Python stubs of protos/scan/v1/scan.proto: `python -m scan_serve.proto.generate`.

grpcio-tools writes `from scan.v1 import scan_pb2` into the service module (the import path follows
the .proto's folder); it is rewritten to this package so the stubs import from where they live.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parents[1] / "protos"
PROTO = "scan/v1/scan.proto"
OUTPUTS = ("scan_pb2.py", "scan_pb2.pyi", "scan_pb2_grpc.py")


def generate(out_dir: Path = HERE) -> list[Path]:
    """Write the stubs into `out_dir`; returns their paths."""
    import grpc_tools  # noqa: PLC0415 - a development dependency (the `test` extra)
    from grpc_tools import protoc  # noqa: PLC0415

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp}",
                            f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", PROTO])
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTOS / PROTO} (exit {code})")
        written = []
        for name in OUTPUTS:
            source = Path(tmp) / Path(PROTO).parent / name
            text = source.read_text().replace("from scan.v1 import scan_pb2", "from scan_serve.proto import scan_pb2")
            target = Path(out_dir) / name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)
