"""Identifier normalisation and tokens: pure logic, no servers."""

from __future__ import annotations

import pytest

from service.errors import BadInput
from service.identity import default_person, default_token, normalise


@pytest.mark.parametrize(
    "kind, raw, expected",
    [
        ("email", "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("phone", "+49 (151) 234-56.78", "+4915123456 78".replace(" ", "")),
        ("phone", "0049 151 2345678", "+491512345678"),
        ("cookie", " abc ", "abc"),
        ("user_id", "u1", "u1"),
    ],
)
def test_values_are_normalised(kind, raw, expected):
    assert normalise(kind, raw) == expected


@pytest.mark.parametrize(
    "kind, raw, field",
    [
        ("fax", "123", "identifier.kind"),
        ("email", "not-an-email", "identifier.value"),
        ("phone", "0151 2345678", "identifier.value"),  # no country code
        ("phone", "+49 abc", "identifier.value"),
        ("cookie", "   ", "identifier.value"),
    ],
)
def test_bad_identifiers_name_the_field(kind, raw, field):
    with pytest.raises(BadInput) as err:
        normalise(kind, raw)
    assert err.value.field == field
    assert raw.strip() not in str(err.value) or not raw.strip()  # values are not echoed


def test_default_people_round_trip():
    assert default_person("user_id:u1") == "u1"
    assert default_person("cookie:c9") == "cookie:c9"
    assert default_token("u1") == "user_id:u1"
    assert default_token("cookie:c9") == "cookie:c9"
    assert default_token("email:h:abc") == "email:h:abc"
