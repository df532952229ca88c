import base64
import json
import struct

import pytest

from application.contract import InvalidRequest, parse_request

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
# A GIF whose header claims 65535 x 65535 pixels in 31 bytes: a decompression bomb.
HUGE_GIF = (
    b"GIF89a" + struct.pack("<HHBBB", 0xFFFF, 0xFFFF, 0, 0, 0)
    + b"," + struct.pack("<HHHHB", 0, 0, 0xFFFF, 0xFFFF, 0) + b"\x02\x00;"
)


def record(value: object) -> bytes:
    return json.dumps(value).encode()


def test_a_plain_request_with_every_field():
    request = parse_request(
        b"req-1",
        record({
            "user_email": "ada@example.com",
            "message": "hi",
            "context": "before",
            "model": "gpt-4o",
            "max_tokens": 50,
            "temperature": 1,
            "system_prompt": "be brief",
            "conversation_id": "thread-7",
            "priority": 3,
        }),
    )
    assert request.request_id == "req-1"
    assert (request.user_email, request.message, request.context) == ("ada@example.com", "hi", "before")
    assert (request.model, request.max_tokens, request.temperature) == ("gpt-4o", 50, 1.0)
    assert (request.system_prompt, request.conversation_id, request.priority) == ("be brief", "thread-7", 3)


def test_the_platform_envelope_is_unwrapped_and_its_key_used_when_the_record_has_none():
    value = record({"key": "req-9", "value": {"user_email": "ada@example.com", "message": "hi"}})
    assert parse_request(None, value).request_id == "req-9"
    assert parse_request(b"record-key", value).request_id == "record-key"
    as_string = record({"key": "k", "value": json.dumps({"user_email": "a@b.c", "message": "x"})})
    assert parse_request(None, as_string).message == "x"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "has no value"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (record([1, 2]), "must be a JSON object"),
        (record({"message": "hi"}), "'user_email' is required"),
        (record({"user_email": "  ", "message": "hi"}), "'user_email' is required"),
        (record({"user_email": "a@b.c"}), "'message' is required"),
        (record({"user_email": "a@b.c", "message": 5}), "'message' is required"),
        (record({"user_email": "a@b.c", "message": "  "}), "may be empty only when images"),
        (record({"user_email": "a@b.c", "message": "x", "max_tokens": 0}), "'max_tokens'"),
        (record({"user_email": "a@b.c", "message": "x", "max_tokens": True}), "'max_tokens'"),
        (record({"user_email": "a@b.c", "message": "x", "temperature": 2.5}), "'temperature'"),
        (record({"user_email": "a@b.c", "message": "x", "temperature": "hot"}), "'temperature'"),
        (record({"user_email": "a@b.c", "message": "x", "model": ""}), "'model'"),
        (record({"user_email": "a@b.c", "message": "x", "images": "abc"}), "'images' must be a list"),
        (record({"user_email": "a@b.c", "message": "x", "images": ["%%%"]}), "image 1 is not valid base64"),
        (
            record({"user_email": "a@b.c", "message": "x", "images": [base64.b64encode(b"GIF? no, text").decode()]}),
            "image 1 is not a supported type",
        ),
        (
            record({"user_email": "a@b.c", "message": "x",
                    "images": [base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()]}),
            "image 1 is damaged or truncated",  # a PNG signature and nothing else
        ),
        (
            record({"user_email": "a@b.c", "message": "x", "images": [base64.b64encode(PNG[:40]).decode()]}),
            "image 1 is damaged or truncated",
        ),
        (
            record({"user_email": "a@b.c", "message": "x", "images": [base64.b64encode(HUGE_GIF).decode()]}),
            "image 1 has too many pixels",
        ),
        (record({"key": "k", "value": [1]}), "envelope's value must be a JSON object"),
    ],
)
def test_invalid_records_are_refused_with_a_clear_reason_and_the_key(value, reason):
    with pytest.raises(InvalidRequest, match=reason) as caught:
        parse_request(b"req-1", value)
    assert caught.value.request_id == "req-1"


def test_a_record_without_any_key_is_refused():
    with pytest.raises(InvalidRequest, match="no key") as caught:
        parse_request(None, record({"user_email": "a@b.c", "message": "hi"}))
    assert caught.value.request_id is None


def test_images_as_base64_or_data_urls_and_message_may_then_be_empty():
    plain = base64.b64encode(PNG).decode()
    request = parse_request(
        b"k",
        record({"user_email": "a@b.c", "images": [plain, "data:image/png;base64," + plain]}),
    )
    assert request.message == ""
    assert [image.mime_type for image in request.images] == ["image/png", "image/png"]
    assert request.images[0].data == PNG
    assert request.images[0].data_url.startswith("data:image/png;base64,iVBOR")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[" * 100_000, "not valid JSON"),
        # A number of 401 digits: out of the temperature's bounds, said as for any other.
        (b'{"user_email": "a@b.c", "message": "x", "temperature": 1' + b"0" * 400 + b"}",
         "'temperature' must be a number from 0 to 2"),
        (b'{"user_email": "a@b.c", "message": "x", "max_tokens": 1' + b"0" * 400 + b"}",
         "'max_tokens' must be an integer from 1 to 1000000"),
        (b'{"user_email": "\\ud800", "message": "x"}', "'user_email' is not valid text"),
        (b'{"user_email": "a@b.c", "message": "\\udfff"}', "'message' is not valid text"),
        (b'{"user_email": "a@b.c", "message": "x", "context": "\\ud800"}', "'context' is not valid text"),
        (b'{"user_email": "a@b.c", "message": "x", "images": ["\\ud800"]}', "not valid base64"),
        (b'{"user_email": "a@b.c", "message": "bell\\u0007"}', "'message' contains control characters"),
        (b'{"user_email": "a\\u0000@b.c", "message": "x"}', "'user_email' contains control characters"),
    ],
)
def test_hostile_records_are_refused_not_crashed_on(value, reason):
    with pytest.raises(InvalidRequest, match=reason):
        parse_request(b"req-1", value)


def test_an_envelope_key_that_is_not_text_is_refused():
    value = b'{"key": "\\ud800", "value": {"user_email": "a@b.c", "message": "x"}}'
    with pytest.raises(InvalidRequest, match="envelope's key is not valid text"):
        parse_request(None, value)


def test_lines_and_tabs_are_fine_and_oversized_records_are_refused():
    assert parse_request(b"k", record({"user_email": "a@b.c", "message": "a\tb\r\nc"})).message == "a\tb\r\nc"
    with pytest.raises(InvalidRequest, match="the limit is 100"):
        parse_request(b"k", record({"user_email": "a@b.c", "message": "x" * 200}), max_bytes=100)


@pytest.mark.parametrize("kind", ["JPEG", "GIF", "PNG", "WEBP"])
def test_an_image_cut_short_is_refused_and_the_whole_one_accepted(kind):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(buffer, kind)
    whole = buffer.getvalue()

    def request(data: bytes):
        return parse_request(b"req-1", record({
            "user_email": "a@b.c", "message": "x", "images": [base64.b64encode(data).decode()],
        }))

    assert request(whole).images[0].data == whole
    with pytest.raises(InvalidRequest, match="image 1 is damaged or truncated"):
        request(whole[: len(whole) * 2 // 3])


@pytest.mark.parametrize("address", ["ada", "ada@example", "ada lovelace@example.com", "@example.com",
                                     "I am ada@example.com, hi"])
def test_user_email_must_look_like_an_address_and_is_never_quoted(address):
    with pytest.raises(InvalidRequest) as refused:
        parse_request(b"k", json.dumps({"user_email": address, "message": "hi"}).encode(), 10_000)
    assert refused.value.message == "'user_email' must be an e-mail address"


def test_keys_are_used_as_sent():
    request = parse_request(b" dup ", record({"user_email": "a@b.co", "message": "x"}))
    assert request.request_id == " dup "
    enveloped = record({"key": " dup ", "value": {"user_email": "a@b.co", "message": "x"}})
    assert parse_request(None, enveloped).request_id == " dup "


def test_a_key_beyond_the_bound_is_refused_without_a_request_id():
    value = record({"user_email": "a@b.co", "message": "x"})
    assert parse_request(b"k" * 64, value, max_key_bytes=64).request_id == "k" * 64
    with pytest.raises(InvalidRequest, match="record key is 65 bytes; the limit is 64") as caught:
        parse_request(b"k" * 65, value, max_key_bytes=64)
    assert caught.value.request_id is None
    enveloped = record({"key": "k" * 65, "value": {"user_email": "a@b.co", "message": "x"}})
    with pytest.raises(InvalidRequest, match="envelope's key is 65 bytes; the limit is 64"):
        parse_request(None, enveloped, max_key_bytes=64)


def test_a_key_that_is_not_text_is_refused():
    with pytest.raises(InvalidRequest, match="not UTF-8 text") as caught:
        parse_request(b"\xff\xfe", record({"user_email": "a@b.co", "message": "x"}))
    assert caught.value.request_id is None


@pytest.mark.parametrize("body, reason", [
    ({"priority": 10 ** 4000}, "'priority' must be an integer from -1000 to 1000"),
    ({"priority": -1001}, "'priority' must be an integer from -1000 to 1000"),
    ({"max_tokens": 10 ** 30}, "'max_tokens' must be an integer from 1 to 1000000"),
    ({"max_tokens": 0}, "'max_tokens' must be an integer from 1 to 1000000"),
])
def test_numbers_beyond_sane_bounds_are_refused(body, reason):
    value = json.dumps({"user_email": "a@b.co", "message": "x", **body}).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_request(b"k", value)
    assert caught.value.message == reason and caught.value.request_id == "k"


def test_an_envelope_nested_too_deep_is_not_valid_json():
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(InvalidRequest, match="envelope's value is not valid JSON"):
        parse_request(b"k", record({"key": "k", "value": deep}))
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_request(b"k", deep.encode())


def test_an_address_that_cannot_be_compared_safely_is_refused():
    value = record({"user_email": "karl@exa_mple\u2603.com", "message": "x"})
    with pytest.raises(InvalidRequest, match="'user_email' cannot be used: the address's domain"):
        parse_request(b"k", value)


def test_a_key_with_control_characters_is_refused():
    with pytest.raises(InvalidRequest, match="record key \\(the request id\\) must be printable text") as caught:
        parse_request(b"k\nforged log line", record({"user_email": "a@b.co", "message": "x"}))
    assert caught.value.request_id is None
