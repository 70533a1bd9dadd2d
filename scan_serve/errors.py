"""One exception root for the gateway; each error carries the gRPC status a client should see."""

from __future__ import annotations

import grpc


class ServeError(Exception):
    """A failure the gateway reports; `code` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ClientGone(ServeError):
    """The client cancelled or its deadline passed: the rest of its request is not worked on."""

    code = grpc.StatusCode.CANCELLED


class InvalidInput(ServeError):
    """The request breaks a rule (undecodable image, wrong raw shape, bad option)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class OverLimit(ServeError):
    """The request is over a configured limit (images, bytes, pixels)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendUnavailable(ServeError):
    """The inference backend cannot answer right now (Triton down, model not loaded)."""

    code = grpc.StatusCode.UNAVAILABLE


class StartupError(ServeError):
    """The gateway cannot start (no model version, unreadable files, bad flags)."""
