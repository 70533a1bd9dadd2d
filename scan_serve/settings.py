"""What a gateway runs with: one `ServeSettings`, the serving defaults in one place (the CLI's flags
default to these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from scan_serve.inputs import InputLimits


@dataclass(frozen=True)
class ServeSettings:
    repository: Path
    model_name: str
    version: Optional[int] = None  # None: the newest intact version
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    metrics_port: Optional[int] = 9464  # None: no metrics endpoint; 0: any free port
    triton_url: Optional[str] = None  # None: embedded onnxruntime
    device: str = "cpu"  # embedded backend: cpu | cuda[:N]
    threads: Optional[int] = None  # embedded backend: onnxruntime intra-op threads
    max_batch: int = 64  # embedded backend: images per batched inference
    max_delay_us: int = 0  # embedded backend: wait this long for more requests to batch
    token: Optional[str] = None  # operator bearer token; None: operator methods are refused
    tls_cert: Optional[bytes] = None
    tls_key: Optional[bytes] = None
    limits: InputLimits = field(default_factory=InputLimits)
    workers: int = 16
    max_concurrent_rpcs: int = 64  # more calls at once are refused with RESOURCE_EXHAUSTED (load shedding)
    health_interval_s: float = 1.0
    store: Optional[Path] = None  # image store + job records; None: fine-tuning is off
    store_max_images: int = 100_000
    store_max_bytes: int = 2 << 30
    finetune_device: str = "cpu"
