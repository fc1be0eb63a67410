"""Status codes and the one exception type of the RPC layer.

Codes are the gRPC canonical codes, which ttRPC uses unchanged in its
``Status`` message.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Code", "RpcError"]


class Code(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """An RPC failed with a status code and a short message.

    Raised by clients when the peer answered with a non-OK status, and raised
    by service implementations to choose the status the caller sees.
    """

    def __init__(self, code: Code | int, message: str) -> None:
        try:
            self.code: Code | int = Code(code)
        except ValueError:
            self.code = code
        self.message = message
        name = self.code.name if isinstance(self.code, Code) else str(self.code)
        super().__init__(f"{name}: {message}")
