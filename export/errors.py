"""One exception root for the export package; the CLI turns each into a one-line message."""

from __future__ import annotations


class ExportError(Exception):
    """Anything that stops an export; the message says what to do about it."""


class RunNotReadyError(ExportError):
    """The run directory has no finished model to export (yet)."""


class HeadError(ExportError):
    """The requested cluster head does not exist."""


class VersionExistsError(ExportError):
    """The version number asked for is already taken in the repository."""


class RepositoryError(ExportError):
    """The repository cannot be written, or holds something incompatible with this model."""


class ParityError(ExportError):
    """onnxruntime does not reproduce PyTorch within the stated tolerance."""


class ModelVersionError(ExportError):
    """A published version is missing, incomplete or corrupt."""
