"""Sharing replies: identical deterministic calls get one reply.

From the response cache (when there is one), or from an identical call in flight
in this process at the same moment (single-flight): the first caller leads and
asks the model; callers arriving meanwhile follow and take its reply. Entries are
scoped by user (their data owner id) unless CACHE_SCOPE is "global".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from application.chat_policy import ChatPolicy
from application.context_window import call_digest
from application.contract import ChatRequest
from application.ports import ModelCall, ModelReply, ResponseCache
from application.single_flight import SingleFlight
from domain.conversation import data_owner


@dataclass(frozen=True)
class Share:
    """Whose (a data owner id, or "global") and which call (its digest) a reply is."""

    scope: str
    digest: str

    @property
    def flight(self) -> str:
        return f"{self.scope}/{self.digest}"


@dataclass(frozen=True)
class Lead:
    """Taking the lead of a call: this request leads (`flight`), or it followed an
    identical call and has its `reply`; neither when its wait ran out."""

    flight: asyncio.Future[ModelReply] | None = None
    reply: ModelReply | None = None


class ReplySharing:
    def __init__(self, policy: ChatPolicy, cache: ResponseCache | None = None) -> None:
        self.policy = policy
        self.cache = cache
        self.flights: SingleFlight[ModelReply] = SingleFlight()

    def share_of(self, request: ChatRequest, call: ModelCall) -> Share | None:
        """The share of a call whose reply may be shared; None if it may not."""
        if not self.policy.shareable(call):
            return None
        scope = "global" if self.policy.cache_scope == "global" else data_owner(request.user_email)
        return Share(scope, call_digest(call))

    async def find(self, share: Share, wait: float | None) -> tuple[ModelReply, str] | None:
        """A reply to the same call, being answered right now (waiting for it at most
        `wait` seconds: "shared") or cached ("cache")."""
        reply = await self.flights.follow(share.flight, wait)
        if reply is not None:
            return reply, "shared"
        if self.cache is not None:
            reply = await self.cache.get(share.scope, share.digest)
            if reply is not None:
                return reply, "cache"
        return None

    async def lead(self, share: Share, time_left: Callable[[], float | None]) -> Lead:
        """Lead the call's flight, or follow the identical one in flight for at most
        `time_left()` seconds; when that fails, lead (or follow) the next one."""
        while True:
            flight = self.flights.lead(share.flight)
            if flight is not None:
                return Lead(flight=flight)
            reply = await self.flights.follow(share.flight, time_left())
            if reply is not None:
                return Lead(reply=reply)
            if time_left() == 0:
                return Lead()  # past its own deadline: it answers so at once

    async def land(self, share: Share, lead: Lead, reply: ModelReply | None, keep: bool) -> None:
        """End a flight this request led. A reply worth keeping goes into the cache
        first: an identical request arriving meanwhile finds it there or in flight,
        never neither."""
        try:
            if reply is not None and keep and self.cache is not None:
                await self.cache.put(share.scope, share.digest, reply, self.policy.cache_ttl)
        finally:
            if lead.flight is not None:
                self.flights.land(share.flight, lead.flight, reply)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
