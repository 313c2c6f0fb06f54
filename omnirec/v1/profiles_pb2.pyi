import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from omnirec.v1 import identity_pb2 as _identity_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkIdentitiesRequest(_message.Message):
    __slots__ = ("identifiers", "merge_accounts")
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    MERGE_ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[_identity_pb2.Identifier]
    merge_accounts: bool
    def __init__(self, identifiers: _Optional[_Iterable[_Union[_identity_pb2.Identifier, _Mapping]]] = ..., merge_accounts: _Optional[bool] = ...) -> None: ...

class LinkIdentitiesResponse(_message.Message):
    __slots__ = ("person_id", "merged")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    merged: int
    def __init__(self, person_id: _Optional[str] = ..., merged: _Optional[int] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("identifier", "limit")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    identifier: _identity_pb2.Identifier
    limit: int
    def __init__(self, identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class ProfileItem(_message.Message):
    __slots__ = ("item_id", "timestamp", "category", "title", "price")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    timestamp: _timestamp_pb2.Timestamp
    category: str
    title: str
    price: float
    def __init__(self, item_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., category: _Optional[str] = ..., title: _Optional[str] = ..., price: _Optional[float] = ...) -> None: ...

class CategoryCount(_message.Message):
    __slots__ = ("category", "events")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    category: str
    events: int
    def __init__(self, category: _Optional[str] = ..., events: _Optional[int] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("person_id", "recent_views", "favourites", "cart", "purchases", "top_categories", "preferred_channel", "preferred_hours", "timezone", "identifier_kinds", "preferred_channel_source", "preferred_hours_source")
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_VIEWS_FIELD_NUMBER: _ClassVar[int]
    FAVOURITES_FIELD_NUMBER: _ClassVar[int]
    CART_FIELD_NUMBER: _ClassVar[int]
    PURCHASES_FIELD_NUMBER: _ClassVar[int]
    TOP_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_HOURS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_KINDS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CHANNEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_HOURS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    recent_views: _containers.RepeatedCompositeFieldContainer[ProfileItem]
    favourites: _containers.RepeatedCompositeFieldContainer[ProfileItem]
    cart: _containers.RepeatedCompositeFieldContainer[ProfileItem]
    purchases: _containers.RepeatedCompositeFieldContainer[ProfileItem]
    top_categories: _containers.RepeatedCompositeFieldContainer[CategoryCount]
    preferred_channel: str
    preferred_hours: _containers.RepeatedScalarFieldContainer[int]
    timezone: str
    identifier_kinds: _containers.RepeatedScalarFieldContainer[str]
    preferred_channel_source: str
    preferred_hours_source: str
    def __init__(self, person_id: _Optional[str] = ..., recent_views: _Optional[_Iterable[_Union[ProfileItem, _Mapping]]] = ..., favourites: _Optional[_Iterable[_Union[ProfileItem, _Mapping]]] = ..., cart: _Optional[_Iterable[_Union[ProfileItem, _Mapping]]] = ..., purchases: _Optional[_Iterable[_Union[ProfileItem, _Mapping]]] = ..., top_categories: _Optional[_Iterable[_Union[CategoryCount, _Mapping]]] = ..., preferred_channel: _Optional[str] = ..., preferred_hours: _Optional[_Iterable[int]] = ..., timezone: _Optional[str] = ..., identifier_kinds: _Optional[_Iterable[str]] = ..., preferred_channel_source: _Optional[str] = ..., preferred_hours_source: _Optional[str] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("identifier",)
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    identifier: _identity_pb2.Identifier
    def __init__(self, identifier: _Optional[_Union[_identity_pb2.Identifier, _Mapping]] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("keys_removed", "events_removed")
    KEYS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    keys_removed: int
    events_removed: int
    def __init__(self, keys_removed: _Optional[int] = ..., events_removed: _Optional[int] = ...) -> None: ...
