"""Which provider errors pause every call (the account is refused) and which stay
one request's error: the 403s in particular (adapters.openai_model.translate)."""

import httpx2
import openai
import pytest

from adapters.openai_model import translate

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def forbidden(body: object) -> openai.PermissionDeniedError:
    response = httpx2.Response(403, request=REQUEST)
    inner = body.get("error", body) if isinstance(body, dict) else body
    return openai.PermissionDeniedError(f"Error code: 403 - {body}", response=response, body=inner)


def error(message: str, code: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@pytest.mark.parametrize(
    "body",
    [
        error("Country, region, or territory not supported", "unsupported_country_region_territory",
              "request_forbidden"),
        error("You are not allowed to access this organization."),
        error("Project `proj_abc` has been archived."),
    ],
)
def test_a_403_refusing_the_account_pauses(body):
    mapped = translate(forbidden(body), "gpt-4o-mini")
    assert (mapped.pause, mapped.error_type, mapped.retryable) == ("permission_denied", "upstream_error", False)


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        # One model only: a project's allowed models, a model needing a verified organisation.
        (error("Project `proj_abc` does not have access to model `gpt-4.1`", "model_not_found"),
         "invalid_request"),
        (error("Your organization must be verified to use the model `o3`."), "invalid_request"),
        # A gateway or firewall in front of the API refusing this one request.
        ("<html><body>403 Forbidden</body></html>", "upstream_error"),
        (error("Permission denied"), "upstream_error"),
        ({"message": "Request blocked by policy"}, "upstream_error"),
    ],
)
def test_a_403_about_one_request_or_one_model_is_that_requests_error_and_pauses_nothing(body, error_type):
    mapped = translate(forbidden(body), "gpt-4o-mini")
    assert (mapped.pause, mapped.error_type, mapped.retryable) == (None, error_type, False)


async def test_one_attempt_ends_at_the_timeout_whatever_part_of_it_is_slow():
    """The SDK's timeout bounds each phase; a body trickling in slower than that
    still ends the attempt at TIMEOUT, as other replicas waiting for it assume."""
    import asyncio
    import time

    from adapters.openai_model import OpenAIModel
    from application.ports import ChatMessage, ModelCall, ModelError

    model = OpenAIModel("key", base_url="http://127.0.0.1:9", timeout=0.2)

    async def trickling(body):
        await asyncio.sleep(5)

    model._post = trickling  # type: ignore[method-assign]
    began = time.monotonic()
    with pytest.raises(ModelError) as caught:
        await model.complete(ModelCall("gpt-4o-mini", [ChatMessage("user", "hi")], 10, 0.7))
    assert time.monotonic() - began < 1.5
    assert caught.value.error_type == "upstream_error" and caught.value.retryable
    await model.close()
