import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from omnirec.v1 import identity_pb2 as _identity_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "timestamp", "channel", "timezone", "value", "automated", "identifier", "event_id", "recommendation_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    AUTOMATED_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: str
    timestamp: _timestamp_pb2.Timestamp
    channel: str
    timezone: str
    value: float
    automated: bool
    identifier: _identity_pb2.Identifier
    event_id: str
    recommendation_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., channel: _Optional[str] = ..., timezone: _Optional[str] = ..., value: _Optional[float] = ..., automated: _Optional[bool] = ..., identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ..., event_id: _Optional[str] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "limit", "exclude_item_ids", "exclude_purchased", "exclude_disliked", "include_categories", "exclude_categories", "in_stock_only", "context_item_id", "exclude_seen", "identifier")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_DISLIKED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_ONLY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_purchased: bool
    exclude_disliked: bool
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    in_stock_only: bool
    context_item_id: str
    exclude_seen: bool
    identifier: _identity_pb2.Identifier
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_purchased: _Optional[bool] = ..., exclude_disliked: _Optional[bool] = ..., include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., in_stock_only: _Optional[bool] = ..., context_item_id: _Optional[str] = ..., exclude_seen: _Optional[bool] = ..., identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "reason", "explanation")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: str
    explanation: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., explanation: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "recommendation_id", "experiment", "arm")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    recommendation_id: str
    experiment: str
    arm: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., recommendation_id: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("user_id", "identifier", "item_ids", "exclude_purchased", "exclude_disliked", "exclude_seen", "include_categories", "exclude_categories", "exclude_item_ids", "in_stock_only", "context_item_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_DISLIKED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_ONLY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    identifier: _identity_pb2.Identifier
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_purchased: bool
    exclude_disliked: bool
    exclude_seen: bool
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    in_stock_only: bool
    context_item_id: str
    def __init__(self, user_id: _Optional[str] = ..., identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ..., item_ids: _Optional[_Iterable[str]] = ..., exclude_purchased: _Optional[bool] = ..., exclude_disliked: _Optional[bool] = ..., exclude_seen: _Optional[bool] = ..., include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., in_stock_only: _Optional[bool] = ..., context_item_id: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "model_version", "recommendation_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    recommendation_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "limit", "mode", "include_categories", "exclude_categories", "exclude_item_ids", "in_stock_only", "user_id", "identifier")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_ONLY_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    limit: int
    mode: str
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    in_stock_only: bool
    user_id: str
    identifier: _identity_pb2.Identifier
    def __init__(self, item_id: _Optional[str] = ..., limit: _Optional[int] = ..., mode: _Optional[str] = ..., include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., in_stock_only: _Optional[bool] = ..., user_id: _Optional[str] = ..., identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_version", "recommendation_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    recommendation_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class TrackEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RejectedEvent(_message.Message):
    __slots__ = ("index", "field", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    field: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TrackEventsResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "rejections")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[RejectedEvent]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[RejectedEvent, _Mapping]]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "category", "title", "price", "in_stock")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    category: str
    title: str
    price: float
    in_stock: bool
    def __init__(self, item_id: _Optional[str] = ..., category: _Optional[str] = ..., title: _Optional[str] = ..., price: _Optional[float] = ..., in_stock: _Optional[bool] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted", "created")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    created: int
    def __init__(self, upserted: _Optional[int] = ..., created: _Optional[int] = ...) -> None: ...
