"""Thousands of generated records: the parser and the use case never crash and
every response can be matched to its record."""

from __future__ import annotations

import asyncio
import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.contract import ChatRequest, InvalidRequest, parse_request, request_id_of
from tests.unit.fakes import make_service, wire

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_values = {
    "user_email": st.one_of(st.emails(), st.text(max_size=30), json_values),
    "message": st.one_of(st.text(max_size=200), json_values),
    "context": st.one_of(st.none(), st.text(max_size=100), json_values),
    "model": st.one_of(st.none(), st.sampled_from(["gpt-4o", "", " "]), json_values),
    "max_tokens": st.one_of(st.none(), st.integers(-5, 10**6), json_values),
    "temperature": st.one_of(st.none(), st.floats(-1, 3), st.integers(-1, 3), json_values),
    "system_prompt": st.one_of(st.none(), st.text(max_size=50), json_values),
    "images": st.one_of(st.none(), st.lists(st.sampled_from([PNG, "%%", "", "data:image/png;base64," + PNG,
                                                              base64.b64encode(b"text").decode()]), max_size=2),
                        json_values),
    "conversation_id": st.one_of(st.none(), st.text(max_size=10), json_values),
    "priority": st.one_of(st.none(), st.integers(), json_values),
}
bodies = st.fixed_dictionaries({}, optional=field_values)
# Mostly well-formed requests, with a wrong field now and then: for the use case.
plausible_bodies = st.fixed_dictionaries(
    {"user_email": st.emails(), "message": st.text(min_size=1, max_size=200)},
    optional={
        "context": st.text(max_size=100),
        "model": st.sampled_from(["gpt-4o", "gpt-4o-mini", ""]),
        "max_tokens": st.integers(-1, 5000),
        "temperature": st.floats(-0.5, 2.5),
        "system_prompt": st.text(max_size=50),
        "images": st.lists(st.sampled_from([PNG, "%%"]), max_size=2),
        "conversation_id": st.text(max_size=10),
        "priority": st.integers(-3, 3),
    },
)
keys = st.one_of(st.none(), st.binary(max_size=12), st.text(max_size=12).map(str.encode))


def encoded(body: dict, envelope: bool, envelope_key: object) -> bytes:
    value = {"key": envelope_key, "value": body} if envelope else body
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def check(key: bytes | None, value: bytes | None) -> ChatRequest | None:
    """The only outcomes: a request, or InvalidRequest naming the record's own key."""
    try:
        request = parse_request(key, value)
    except InvalidRequest as error:
        if error.request_id is not None and request_id_of(key) is not None:
            assert error.request_id == request_id_of(key)
        return None
    assert request.request_id
    if request_id_of(key) is not None:
        assert request.request_id == request_id_of(key)
    return request


@settings(max_examples=2000, deadline=None)
@given(key=keys, value=st.one_of(st.none(), st.binary(max_size=200)))
def test_arbitrary_bytes_never_crash_the_parser(key, value):
    check(key, value)


@settings(max_examples=2000, deadline=None)
@given(key=keys, body=bodies, envelope=st.booleans(), envelope_key=json_values)
def test_arbitrary_requests_never_crash_the_parser(key, body, envelope, envelope_key):
    check(key, encoded(body, envelope, envelope_key))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.text(min_size=1, max_size=8).map(str.encode), body=plausible_bodies)
def test_every_readable_request_gets_exactly_one_kind_of_answer(key, body):
    request = check(key, encoded(body, False, None))
    if request is None:
        return
    service, model = make_service(daily_token_limit=50_000)
    payload = asyncio.run(wire(service, request))
    assert ("response" in payload) != ("error" in payload)
    assert len(model.calls) <= 1
    again = asyncio.run(wire(service, request))  # redelivered: same answer, no new call
    assert again == payload and len(model.calls) <= 1
