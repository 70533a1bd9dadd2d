"""The gateway and the client import without the training stack (checked in a fresh interpreter)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnxruntime", "faiss", "scipy", "sklearn", "matplotlib")


def loaded_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement", ["import scan_serve.server", "import scan_serve.cli",
                                       "from scan_serve.inputs import prepare_images"])
def test_the_gateway_imports_without_torch(statement):
    assert "torch" not in loaded_after(statement)


def test_the_client_imports_without_torch_onnxruntime_or_faiss():
    assert loaded_after("import scan_serve.client") == set()


def test_a_gateway_classifies_without_loading_torch():
    statement = (
        "import numpy as np; from pathlib import Path; from scan_serve.server import ServeSettings, create_server; "
        "from scan_serve.client import ScanClient; "
        "r = create_server(ServeSettings(repository=Path('model_repository'), model_name='fashion_mnist', port=0, "
        "metrics_port=None), log_line=lambda _: None); "
        "c = ScanClient(f'127.0.0.1:{r.port}'); "
        "assert len(c.classify([np.zeros((28, 28), np.uint8)])) == 1; c.close(); r.stop(0)")
    assert "torch" not in loaded_after(statement)
