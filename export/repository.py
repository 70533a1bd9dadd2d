"""A Triton model repository on disk, and the versions in it.

```
<repository>/<model>/config.pbtxt          Triton's model configuration (shared by the versions)
<repository>/<model>/<N>/model.onnx        the served graph of version N (N = 1, 2, ...)
<repository>/<model>/<N>/metadata.json     input shape, clusters, threshold, source run, parity, file hashes
<repository>/<model>/<N>/prototypes.*      the prototype index (see export.prototypes)
<repository>/<model>/<N>/finetune.pt       PyTorch weights + config to fine-tune this version further
```
A version is written into a hidden staging folder beside its final place, every file flushed to
disk, then the folder is renamed to `<N>`: Triton and the gateway see a version whole or not at
all. A staging folder left by a killed export is removed by the next export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from export.errors import ModelVersionError, RepositoryError, VersionExistsError
from trainer.atomic import atomic_write_text, file_digest

STAGING_PREFIX = ".staging-"
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
FINETUNE_FILE = "finetune.pt"
CONFIG_FILE = "config.pbtxt"


def sha256_of(path: Path) -> str:
    return file_digest(path, "sha256")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ModelVersion:
    """A published version folder and its metadata."""

    name: str
    version: int
    path: Path
    metadata: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def finetune_path(self) -> Path:
        return self.path / FINETUNE_FILE

    def verify(self) -> None:
        """Check every file the metadata lists is present with its recorded SHA-256 (model.onnx must be listed)."""
        files = self.metadata.get("files")
        if not isinstance(files, dict) or MODEL_FILE not in files:
            raise ModelVersionError(f"{self.name} version {self.version}: metadata.json records no SHA-256 of "
                                    f"{MODEL_FILE}, so its integrity cannot be checked (re-export it)")
        for name, expected in files.items():
            path = self.path / name
            if not path.is_file():
                raise ModelVersionError(f"{self.name} version {self.version}: {name} is missing from {self.path}")
            actual = sha256_of(path)
            if actual != expected:
                raise ModelVersionError(
                    f"{self.name} version {self.version}: {name} is corrupt (sha256 {actual[:12]}..., "
                    f"metadata says {expected[:12]}...)"
                )


class ModelRepository:
    """`root` holds one folder per model name."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def model_dir(self, name: str) -> Path:
        if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..",):
            raise RepositoryError(f"model name {name!r} is not a plain folder name")
        return self.root / name

    def versions(self, name: str) -> list[int]:
        """Published version numbers of `name`, ascending (staging folders are not versions)."""
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir()
                      if p.is_dir() and _version_number(p.name))

    def next_version(self, name: str) -> int:
        existing = self.versions(name)
        return existing[-1] + 1 if existing else 1

    def ensure_writable(self, name: str) -> Path:
        """Create `<root>/<name>` if needed and prove a file can be created in it."""
        folder = self.model_dir(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise RepositoryError(
                f"repository {self.root} is not writable ({exc.strerror or exc}: {exc.filename or folder})"
            ) from exc
        return folder

    def remove_stale_staging(self, name: str) -> list[Path]:
        """Remove staging folders whose exporting process is gone; return what was removed."""
        folder = self.model_dir(name)
        removed = []
        if not folder.is_dir():
            return removed
        for path in folder.iterdir():
            if not path.name.startswith(STAGING_PREFIX):
                continue
            parts = path.name[len(STAGING_PREFIX):].split("-")  # <version>-<pid>-<random>
            pid = parts[1] if len(parts) >= 3 else ""
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue  # another export is writing it right now
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def publish(self, name: str, version: int, fill: Callable[[Path], dict[str, Any]]) -> ModelVersion:
        """Write version `version` of `name` atomically.

        `fill(staging_dir)` writes the version's files and returns its metadata (without the file
        hashes, which this adds); then the staging folder is renamed to `<name>/<version>`.
        """
        if not 1 <= version <= MAX_VERSION:
            raise RepositoryError(f"version must be within 1..{MAX_VERSION} (Triton ignores 0; its numbers are "
                                  f"int64), got {version}")
        folder = self.ensure_writable(name)
        final = folder / str(version)
        if final.exists():
            raise VersionExistsError(f"{name} version {version} already exists in {self.root}; "
                                     "use --model-version next or another number")
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-{os.getpid()}-", dir=folder))
        try:
            metadata = fill(staging)
            metadata["version"] = version
            metadata["files"] = {p.name: sha256_of(p) for p in sorted(staging.iterdir())
                                 if p.is_file() and p.name != METADATA_FILE}
            _write_json(staging / METADATA_FILE, metadata)
            os.chmod(staging, 0o755)  # mkdtemp makes folders private; Triton and the gateway may run as others
            _fsync_dir(staging)
            try:
                os.rename(staging, final)
            except OSError as exc:
                if final.exists():
                    raise VersionExistsError(
                        f"{name} version {version} appeared while this export was writing it (another export?)"
                    ) from exc
                raise RepositoryError(f"cannot move the new version into {final}: {exc}") from exc
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.load(name, version)

    def load(self, name: str, version: Optional[int] = None, verify: bool = False) -> ModelVersion:
        """A published version (`None`: the newest)."""
        existing = self.versions(name)
        if not existing:
            raise ModelVersionError(f"no published version of model {name!r} in {self.root}")
        if version is None:
            version = existing[-1]
        if version not in existing:
            raise ModelVersionError(f"model {name!r} has no version {version} in {self.root} (it has {existing})")
        path = self.model_dir(name) / str(version)
        try:
            metadata = json.loads((path / METADATA_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelVersionError(f"{path}/{METADATA_FILE} cannot be read ({exc})") from exc
        result = ModelVersion(name, version, path, metadata)
        if verify:
            result.verify()
        return result


MAX_VERSION = 2**63 - 1  # Triton's version numbers are int64


def _version_number(name: str) -> bool:
    """Whether a folder name is a version: ASCII digits, no leading zero, within int64 (not '²', not 10**30)."""
    return name.isascii() and name.isdigit() and not name.startswith("0") and int(name) <= MAX_VERSION


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")
