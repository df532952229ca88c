"""Personal data in model calls: masked with placeholders on the way out (and put
back in the reply), or found so that the request is refused (PII_MODE=block).

A pasted table of numbers takes seconds to search, so long texts are searched in
a thread: the event loop (and the health server) must not wait for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from opentelemetry import trace

from application.pii import PiiMasker, PiiSession
from application.ports import ModelCall

PII_INLINE_CHARS = 4000  # longer texts are searched for personal data in a thread
T = TypeVar("T")


class CallMasking:
    """PII_MODE applied to calls: "off" (no masker), "mask" or "block"."""

    def __init__(self, masker: PiiMasker | None, mode: str = "mask") -> None:
        self.masker = masker if mode != "off" else None
        self.mode = mode

    @property
    def blocks(self) -> bool:
        """Whether requests carrying personal data are refused rather than masked."""
        return self.masker is not None and self.mode == "block"

    async def found_in(self, *texts: str) -> dict[str, int]:
        """Occurrences of personal data per entity type in the texts."""
        if self.masker is None:
            return {}
        return await _off_loop_if_long(list(texts), self.masker.found_in, *texts)

    async def mask(self, call: ModelCall) -> tuple[ModelCall, PiiSession | None]:
        """The call with personal data replaced by placeholders (one mapping for all
        its texts), and the session that puts them back; as it is when not masking."""
        if self.masker is None:
            return call, None
        return await _off_loop_if_long(
            [message.text for message in call.messages], self._masked, call
        )

    def _masked(self, call: ModelCall) -> tuple[ModelCall, PiiSession | None]:
        assert self.masker is not None
        session = self.masker.session()
        texts = session.mask_all([message.text for message in call.messages])
        if not session.found:
            return call, None
        trace.get_current_span().set_attribute("chater.pii_masked", sum(session.found.values()))
        messages = [replace(m, text=text) for m, text in zip(call.messages, texts)]
        return replace(call, messages=messages), session


async def _off_loop_if_long(texts: list[str], work: Callable[..., T], *args: object) -> T:
    if sum(map(len, texts)) > PII_INLINE_CHARS:
        return await asyncio.to_thread(work, *args)
    return work(*args)
