import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudienceRequest(_message.Message):
    __slots__ = ("item_ids", "category", "limit", "page_token", "channels", "not_before", "window_hours", "quiet_start_hour", "quiet_end_hour", "ignore_quiet_hours")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_HOURS_FIELD_NUMBER: _ClassVar[int]
    QUIET_START_HOUR_FIELD_NUMBER: _ClassVar[int]
    QUIET_END_HOUR_FIELD_NUMBER: _ClassVar[int]
    IGNORE_QUIET_HOURS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    category: str
    limit: int
    page_token: str
    channels: _containers.RepeatedScalarFieldContainer[str]
    not_before: _timestamp_pb2.Timestamp
    window_hours: int
    quiet_start_hour: int
    quiet_end_hour: int
    ignore_quiet_hours: bool
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., category: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., channels: _Optional[_Iterable[str]] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_hours: _Optional[int] = ..., quiet_start_hour: _Optional[int] = ..., quiet_end_hour: _Optional[int] = ..., ignore_quiet_hours: _Optional[bool] = ...) -> None: ...

class AudienceMember(_message.Message):
    __slots__ = ("user_id", "score", "reason", "send_at", "channel", "probability", "item_ids", "explanation", "local_hour", "timezone")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SEND_AT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_HOUR_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    score: float
    reason: str
    send_at: _timestamp_pb2.Timestamp
    channel: str
    probability: float
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    explanation: str
    local_hour: int
    timezone: str
    def __init__(self, user_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., send_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., channel: _Optional[str] = ..., probability: _Optional[float] = ..., item_ids: _Optional[_Iterable[str]] = ..., explanation: _Optional[str] = ..., local_hour: _Optional[int] = ..., timezone: _Optional[str] = ...) -> None: ...

class LeftOut(_message.Message):
    __slots__ = ("bought", "opted_out", "fatigued", "quiet", "erased")
    BOUGHT_FIELD_NUMBER: _ClassVar[int]
    OPTED_OUT_FIELD_NUMBER: _ClassVar[int]
    FATIGUED_FIELD_NUMBER: _ClassVar[int]
    QUIET_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    bought: int
    opted_out: int
    fatigued: int
    quiet: int
    erased: int
    def __init__(self, bought: _Optional[int] = ..., opted_out: _Optional[int] = ..., fatigued: _Optional[int] = ..., quiet: _Optional[int] = ..., erased: _Optional[int] = ...) -> None: ...

class AudienceResponse(_message.Message):
    __slots__ = ("members", "next_page_token", "model_version", "left_out", "candidates")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[AudienceMember]
    next_page_token: str
    model_version: str
    left_out: LeftOut
    candidates: int
    def __init__(self, members: _Optional[_Iterable[_Union[AudienceMember, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., model_version: _Optional[str] = ..., left_out: _Optional[_Union[LeftOut, _Mapping]] = ..., candidates: _Optional[int] = ...) -> None: ...
