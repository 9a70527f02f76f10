from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChatRequest(_message.Message):
    __slots__ = ("prompt", "max_new_tokens")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    max_new_tokens: int
    def __init__(self, prompt: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class ChatReply(_message.Message):
    __slots__ = ("answer", "model")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    answer: str
    model: str
    def __init__(self, answer: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...
