import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from omnirec.v1 import identity_pb2 as _identity_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictSendTimeRequest(_message.Message):
    __slots__ = ("user_id", "channel", "not_before", "window_hours", "timezone", "quiet_start_hour", "quiet_end_hour", "ignore_quiet_hours", "identifier")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_HOURS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    QUIET_START_HOUR_FIELD_NUMBER: _ClassVar[int]
    QUIET_END_HOUR_FIELD_NUMBER: _ClassVar[int]
    IGNORE_QUIET_HOURS_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    channel: str
    not_before: _timestamp_pb2.Timestamp
    window_hours: int
    timezone: str
    quiet_start_hour: int
    quiet_end_hour: int
    ignore_quiet_hours: bool
    identifier: _identity_pb2.Identifier
    def __init__(self, user_id: _Optional[str] = ..., channel: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_hours: _Optional[int] = ..., timezone: _Optional[str] = ..., quiet_start_hour: _Optional[int] = ..., quiet_end_hour: _Optional[int] = ..., ignore_quiet_hours: _Optional[bool] = ..., identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ...) -> None: ...

class SendSlot(_message.Message):
    __slots__ = ("send_at", "probability", "local_hour")
    SEND_AT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_HOUR_FIELD_NUMBER: _ClassVar[int]
    send_at: _timestamp_pb2.Timestamp
    probability: float
    local_hour: int
    def __init__(self, send_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., probability: _Optional[float] = ..., local_hour: _Optional[int] = ...) -> None: ...

class PredictSendTimeResponse(_message.Message):
    __slots__ = ("send_at", "probability", "alternatives", "source", "evidence", "timezone", "model_version", "local_hour", "evidence_detail")
    SEND_AT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_HOUR_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    send_at: _timestamp_pb2.Timestamp
    probability: float
    alternatives: _containers.RepeatedCompositeFieldContainer[SendSlot]
    source: str
    evidence: int
    timezone: str
    model_version: str
    local_hour: int
    evidence_detail: Evidence
    def __init__(self, send_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., probability: _Optional[float] = ..., alternatives: _Optional[_Iterable[_Union[SendSlot, _Mapping]]] = ..., source: _Optional[str] = ..., evidence: _Optional[int] = ..., timezone: _Optional[str] = ..., model_version: _Optional[str] = ..., local_hour: _Optional[int] = ..., evidence_detail: _Optional[_Union[Evidence, _Mapping]] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("deliveries", "engagements", "activity_events", "rule")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_EVENTS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    deliveries: int
    engagements: int
    activity_events: int
    rule: str
    def __init__(self, deliveries: _Optional[int] = ..., engagements: _Optional[int] = ..., activity_events: _Optional[int] = ..., rule: _Optional[str] = ...) -> None: ...

class RankChannelsRequest(_message.Message):
    __slots__ = ("user_id", "identifier")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    identifier: _identity_pb2.Identifier
    def __init__(self, user_id: _Optional[str] = ..., identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ...) -> None: ...

class ChannelScore(_message.Message):
    __slots__ = ("channel", "score", "evidence", "opted_out", "next_allowed")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    OPTED_OUT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    channel: str
    score: float
    evidence: int
    opted_out: bool
    next_allowed: _timestamp_pb2.Timestamp
    def __init__(self, channel: _Optional[str] = ..., score: _Optional[float] = ..., evidence: _Optional[int] = ..., opted_out: _Optional[bool] = ..., next_allowed: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RankChannelsResponse(_message.Message):
    __slots__ = ("channels", "model_version", "source")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedCompositeFieldContainer[ChannelScore]
    model_version: str
    source: str
    def __init__(self, channels: _Optional[_Iterable[_Union[ChannelScore, _Mapping]]] = ..., model_version: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...
