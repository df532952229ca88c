"""LanguageModel port without a network: deterministic answers, labelled as offline.

It lets the demo and a newcomer's first run work with no API key, and it shows
what the service really sends: the history it carries and the images it got.
"""

from __future__ import annotations

from application.ports import ModelCall, ModelReply, TokenCounter

OFFLINE_PREFIX = "offline:"


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return f"“{text if len(text) <= limit else text[: limit - 1] + '…'}”"


class OfflineModel:
    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    async def complete(self, call: ModelCall) -> ModelReply:
        question = call.messages[-1]
        earlier_users = [m for m in call.messages[:-1] if m.role == "user"]
        sentences = ["[offline model, no API key]"]
        if question.text:
            sentences.append(f"You said {_quote(question.text)}.")
        if question.images:
            kinds = ", ".join(
                f"{image.mime_type} of {len(image.data)} bytes" for image in question.images
            )
            sentences.append(f"I received {len(question.images)} image(s): {kinds}.")
        if earlier_users:
            sentences.append(
                f"This conversation has {len(earlier_users)} earlier turn(s); "
                f"you last asked {_quote(earlier_users[-1].text)}."
            )
        else:
            sentences.append("This is the start of our conversation.")
        text = " ".join(sentences)
        prompt_tokens = sum(self.counter.count(m.text) + 4 for m in call.messages) + 3
        completion_tokens = min(self.counter.count(text), call.max_tokens)
        return ModelReply(
            text=text,
            model=OFFLINE_PREFIX + call.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason="stop",
        )

    async def close(self) -> None:
        """Nothing to release."""
