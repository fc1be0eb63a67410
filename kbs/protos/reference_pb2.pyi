from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReferenceValueQueryRequest(_message.Message):
    __slots__ = ("reference_value_id",)
    REFERENCE_VALUE_ID_FIELD_NUMBER: _ClassVar[int]
    reference_value_id: str
    def __init__(self, reference_value_id: _Optional[str] = ...) -> None: ...

class ReferenceValueQueryResponse(_message.Message):
    __slots__ = ("reference_value_results",)
    REFERENCE_VALUE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    reference_value_results: str
    def __init__(self, reference_value_results: _Optional[str] = ...) -> None: ...

class ReferenceValueRegisterRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class ReferenceValueRegisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
