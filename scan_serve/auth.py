"""Operator-only methods need `authorization: Bearer <token>` metadata, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Any, Callable, Optional

import grpc

from scan_serve.gateway import SERVICE_NAME
from scan_serve.metrics import Metrics

OPERATOR_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in (
    "SetClusterNames", "SubmitImages", "StartFineTune", "GetFineTuneJob", "ListFineTuneJobs", "CancelFineTuneJob"))
STREAMING_REQUESTS = frozenset({f"/{SERVICE_NAME}/SubmitImages"})


class OperatorAuth(grpc.ServerInterceptor):
    """Operator-only methods need `authorization: Bearer <token>`; compared in constant time."""

    def __init__(self, token: Optional[str], metrics: Metrics) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if method not in OPERATOR_METHODS:
            return continuation(handler_call_details)
        if self._expected is None:
            return self._refuse(method, grpc.StatusCode.PERMISSION_DENIED,
                                "operator methods are disabled: start scan-serve with --token-file")
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if not hmac.compare_digest(given.encode() if isinstance(given, str) else bytes(given), self._expected):
            return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED,
                                "this method needs the operator token: metadata 'authorization: Bearer <token>'")
        return continuation(handler_call_details)

    def _refuse(self, method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        self._metrics.requests.labels(method.rsplit("/", 1)[-1], code.name).inc()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(code, message)

        if method in STREAMING_REQUESTS:
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)
