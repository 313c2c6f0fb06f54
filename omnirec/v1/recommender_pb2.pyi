import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "timestamp", "channel", "timezone", "value")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: str
    timestamp: _timestamp_pb2.Timestamp
    channel: str
    timezone: str
    value: float
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., channel: _Optional[str] = ..., timezone: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "limit", "exclude_item_ids", "exclude_purchased", "exclude_disliked")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_DISLIKED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_purchased: bool
    exclude_disliked: bool
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_purchased: _Optional[bool] = ..., exclude_disliked: _Optional[bool] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "recommendation_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    recommendation_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., recommendation_id: _Optional[str] = ...) -> None: ...
