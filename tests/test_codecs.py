"""How values are encoded in Redis (service/store/codecs.py): pure functions, no server."""

from __future__ import annotations

import json

import pytest

from service.store.codecs import (
    decode_engagements,
    decode_entries,
    encode_engagement,
    encode_entry,
)

ENTRIES = [("i1", "view", 1_790_000_000), ('a "quoted", ünïcode\\item', "purchase", 7)]
EVENTS = [
    ("email", "message_delivered", 1_790_000_000, "Europe/Berlin", False),
    ("sms", "message_open", 3, "", True),
]


def test_lists_decode_in_one_parse_to_what_was_encoded():
    for raws in ([encode_entry(e).encode() for e in ENTRIES], [encode_entry(e) for e in ENTRIES]):
        assert decode_entries(raws) == ENTRIES
    assert decode_engagements([encode_engagement(e).encode() for e in EVENTS]) == EVENTS
    assert decode_entries([]) == [] and decode_engagements([]) == []


@pytest.mark.parametrize(
    "corrupt",
    [
        b"[1,2",  # the joined list does not parse
        b'["i2","view",1],["i3","view",2]',  # it parses, into one entry too many
    ],
)
def test_a_corrupt_entry_fails_as_it_would_alone(corrupt):
    raws = [encode_entry(ENTRIES[0]).encode(), corrupt]
    with pytest.raises(json.JSONDecodeError):
        decode_entries(raws)
