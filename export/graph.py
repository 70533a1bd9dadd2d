"""The served graph: UINT8 images in, cluster probabilities and unit-norm embeddings out.

```
images    UINT8 (N, C, H, W)  raw pixels, N dynamic, C/H/W fixed to what the model was trained on
probs     FP32  (N, K)        softmax of the chosen cluster head
embedding FP32  (N, D)        L2-normalized backbone features (what the prototype index holds)
```
Scaling to [0, 1] and the per-channel normalization happen inside the graph, so neither Triton
nor a client needs to know the training statistics. The same `ServedModel` module is what
PyTorch runs in the parity check, so "ONNX equals PyTorch" compares like with like.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.errors import ExportError, ParityError
from export.session import INPUT_NAME, OUTPUT_NAMES, run_session
from trainer.models.scan_model import ScanModel

OPSET = 17
#: Largest |onnxruntime - PyTorch| allowed (fp32, CPU), per output. Embeddings are unit vectors and
#: agree to about 1e-7. Probabilities inherit fp32 rounding amplified by the size of the logits, which
#: self-labeling makes large: measured 1.7e-6 on the Fashion-MNIST convnet and 4.5e-5 on a ResNet-18.
#: A wrong op, a missing normalization or another head differs by more than 1e-2.
PARITY_TOLERANCE = {"probs": 1e-3, "embedding": 1e-4}


class ServedModel(nn.Module):
    """`ScanModel` with exactly one cluster head, as served: ``forward(uint8 images) -> (probs, embedding)``."""

    def __init__(self, model: ScanModel) -> None:
        super().__init__()
        if model.cluster_heads is None or model.cluster_heads.num_heads != 1:
            heads = 0 if model.cluster_heads is None else model.cluster_heads.num_heads
            raise ExportError(f"the served model needs exactly one cluster head, this one has {heads} (keep_head first)")
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float() / 255.0
        features = self.model.features(x)
        probs = torch.softmax(self.model.cluster_logits_from_features(features)[0], dim=-1)
        return probs, F.normalize(features, dim=1)


def export_onnx(served: ServedModel, path: Path, channels: int, image_size: int) -> Path:
    """Trace `served` (on CPU, eval mode) into an ONNX file with a dynamic batch axis."""
    served = served.cpu().eval()
    example = torch.zeros((2, channels, image_size, image_size), dtype=torch.uint8)
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the classic exporter's deprecation notice
        torch.onnx.export(
            served, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    return Path(path)


@torch.no_grad()
def run_torch(served: ServedModel, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch reference (fp32, the module's device) for uint8 `images (N, C, H, W)`."""
    served.eval()
    device = next(served.parameters()).device
    probs, embedding = [], []
    for start in range(0, len(images), batch_size):
        p, e = served(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device))
        probs.append(p.float().cpu().numpy())
        embedding.append(e.float().cpu().numpy())
    return np.concatenate(probs), np.concatenate(embedding)


def check_parity(
    session: Any,
    served: ServedModel,
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 64),
    tolerance: Optional[dict[str, float]] = None,
) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on real `images`, batched in each of `batch_sizes`.

    Returns the figures (max abs differences per output, argmax agreement); raises `ParityError`
    with them when a difference exceeds its `tolerance` (default `PARITY_TOLERANCE`).
    """
    tolerance = dict(PARITY_TOLERANCE if tolerance is None else tolerance)
    if len(images) == 0:
        raise ExportError("the parity check needs at least one image")
    reference = dict(zip(OUTPUT_NAMES, run_torch(served, images)))
    figures: dict[str, Any] = {"images": int(len(images)), "tolerance": tolerance, "batch_sizes": {}}
    failures = []
    for batch_size in batch_sizes:
        outputs = dict(zip(OUTPUT_NAMES, run_session(session, images, batch_size)))
        row = {f"max_abs_diff_{name}": float(np.abs(outputs[name] - reference[name]).max()) for name in OUTPUT_NAMES}
        row["argmax_agreement"] = float((outputs["probs"].argmax(1) == reference["probs"].argmax(1)).mean())
        figures["batch_sizes"][str(batch_size)] = row
        failures += [f"batch {batch_size}: {name} differ by {row[f'max_abs_diff_{name}']:.3g} > {tolerance[name]:g}"
                     for name in OUTPUT_NAMES if not row[f"max_abs_diff_{name}"] <= tolerance[name]]  # NaN fails too
    figures["max_abs_diff"] = {name: max(r[f"max_abs_diff_{name}"] for r in figures["batch_sizes"].values())
                               for name in OUTPUT_NAMES}
    if failures:
        agreement = min(r["argmax_agreement"] for r in figures["batch_sizes"].values())
        raise ParityError(f"onnxruntime differs from PyTorch on {len(images)} real images ({'; '.join(failures)}; "
                          f"argmax agreement {agreement:.3f})")
    return figures


def describe_parity(figures: dict[str, Any]) -> str:
    """One line for people: the largest differences against their tolerances."""
    diffs = ", ".join(f"{name} {figures['max_abs_diff'][name]:.2g} (tolerance {figures['tolerance'][name]:g})"
                      for name in OUTPUT_NAMES)
    return f"max |onnxruntime - PyTorch| on {figures['images']} real images: {diffs}"
