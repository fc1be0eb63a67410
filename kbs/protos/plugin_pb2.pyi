from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PluginRequest(_message.Message):
    __slots__ = ("body", "query", "path", "method")
    class QueryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BODY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    query: _containers.ScalarMap[str, str]
    path: _containers.RepeatedScalarFieldContainer[str]
    method: str
    def __init__(self, body: _Optional[bytes] = ..., query: _Optional[_Mapping[str, str]] = ..., path: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ...) -> None: ...

class ValidateAuthRequest(_message.Message):
    __slots__ = ("body", "query", "path", "method")
    class QueryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BODY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    query: _containers.ScalarMap[str, str]
    path: _containers.RepeatedScalarFieldContainer[str]
    method: str
    def __init__(self, body: _Optional[bytes] = ..., query: _Optional[_Mapping[str, str]] = ..., path: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ...) -> None: ...

class NeedsEncryptionRequest(_message.Message):
    __slots__ = ("body", "query", "path", "method")
    class QueryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BODY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    query: _containers.ScalarMap[str, str]
    path: _containers.RepeatedScalarFieldContainer[str]
    method: str
    def __init__(self, body: _Optional[bytes] = ..., query: _Optional[_Mapping[str, str]] = ..., path: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ...) -> None: ...

class PluginResponse(_message.Message):
    __slots__ = ("body", "status_code", "content_type")
    BODY_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    status_code: int
    content_type: str
    def __init__(self, body: _Optional[bytes] = ..., status_code: _Optional[int] = ..., content_type: _Optional[str] = ...) -> None: ...

class ValidateAuthResponse(_message.Message):
    __slots__ = ("requires_admin_auth",)
    REQUIRES_ADMIN_AUTH_FIELD_NUMBER: _ClassVar[int]
    requires_admin_auth: bool
    def __init__(self, requires_admin_auth: _Optional[bool] = ...) -> None: ...

class NeedsEncryptionResponse(_message.Message):
    __slots__ = ("requires_payload_encryption",)
    REQUIRES_PAYLOAD_ENCRYPTION_FIELD_NUMBER: _ClassVar[int]
    requires_payload_encryption: bool
    def __init__(self, requires_payload_encryption: _Optional[bool] = ...) -> None: ...
