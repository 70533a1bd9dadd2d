"""The served graph's names and onnxruntime sessions: what the gateway needs of `export`, without torch.

`export.graph` traces the graph with PyTorch and checks its parity; the gateway only opens and runs
it, so this module imports numpy and (when a session is opened) onnxruntime, never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from export.errors import ExportError

INPUT_NAME = "images"
OUTPUT_NAMES = ("probs", "embedding")


def onnx_providers(device: str = "cpu") -> list[str]:
    """onnxruntime execution providers for `device` ("cpu" or "cuda[:N]"); CUDA only when the build has it."""
    import onnxruntime as ort  # noqa: PLC0415 - optional heavy dependency, imported where used

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError(
                "onnxruntime has no CUDA provider here (install onnxruntime-gpu: scripts/install.sh --gpu), "
                "or use --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path: str | Path, device: str = "cpu", threads: Optional[int] = None) -> Any:
    """An onnxruntime InferenceSession on `device`; `threads` bounds intra-op threads (None: onnxruntime's default)."""
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        raise ExportError("onnxruntime is not installed (pip install onnxruntime, or scripts/install.sh)") from None
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=onnx_providers(device))


def run_session(session: Any, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """`(probs (N, K), embedding (N, D))` of uint8 `images (N, C, H, W)`, in batches."""
    probs, embedding = [], []
    for start in range(0, len(images), batch_size):
        p, e = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images[start:start + batch_size])})
        probs.append(p)
        embedding.append(e)
    return np.concatenate(probs), np.concatenate(embedding)
