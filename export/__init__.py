"""scan-export: backbone + chosen cluster head -> one ONNX graph -> a versioned Triton model repository.

Modules, by role:
* `graph`         the served graph (`ServedModel`), ONNX tracing, the parity check;
* `session`       the graph's input/output names and onnxruntime sessions (torch-free: the gateway's part);
* `triton_config` `config.pbtxt` from Triton's own `ModelConfig` schema;
* `prototypes`    the prototype selection and the faiss index stored with each version;
* `repository`    the repository on disk: versions, atomic publishing, reading a version back;
* `publish`       `export_model`: one `ScanModel` -> one published version (also used by fine-tuning);
* `run`           `export_run`: a training run directory -> `export_model`;
* `cli`           `scan-export`.
"""

from export.errors import ExportError
from export.repository import ModelRepository, ModelVersion

__all__ = ["ExportError", "ModelRepository", "ModelVersion"]
