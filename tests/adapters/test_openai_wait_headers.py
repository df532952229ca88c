"""How long OpenAI asks a client to wait: retry-after-ms, retry-after (seconds or an
HTTP date) and, on a 429, the rate limits' reset headers."""

import pytest

from adapters.openai_model import retry_after


@pytest.mark.parametrize(
    ("headers", "rate_limited", "seconds"),
    [
        ({"retry-after-ms": "250"}, True, 0.25),
        ({"retry-after": "3"}, False, 3.0),
        ({"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "20ms"}, True, 90.0),
        ({"x-ratelimit-reset-requests": "1m30s"}, False, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, True, 0.0),
        ({"retry-after": "soon"}, True, None),
        ({"retry-after": "nan"}, True, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}, True, 0.0),
        ({}, True, None),
    ],
)
def test_wait_headers_are_read_as_openai_sends_them(headers, rate_limited, seconds):
    assert retry_after(headers, rate_limited) == seconds
