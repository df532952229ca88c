"""The chat use case: answer one request with the conversation's history as context."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    JSONTranscoder,
    Mapper,
    PersistenceError,
    RecordConflictError,
    Transcoding,
)
from eventsourcing.utils import resolve_topic
from opentelemetry import trace

from application.batching import BatchCollector
from application.budget_ledger import BudgetLedger
from application.contract import ChatRequest, ChatResponse, Usage, iso_timestamp_of
from application.group_commit import GroupCommitter
from application.images import Image, image_tokens
from application.model_slots import ModelSlots
from application.personal_data import PersonalDataMapper
from application.pii import PiiMasker, PiiSession
from application.single_flight import SingleFlight
from application.ports import (
    ChatMessage,
    Clock,
    DataKeys,
    LanguageModel,
    Metrics,
    ModelCall,
    ModelError,
    ModelReply,
    RateLimiter,
    ResponseCache,
    TokenCounter,
    waiting_at_circuit,
)
from domain.conversation import (
    ERASED,
    MESSAGE_OVERHEAD_TOKENS,
    SHREDDED,
    Conversation,
    Turn,
    conversation_id,
    data_owner,
    turn_tokens,
)
from domain.pricing import DEFAULT_PRICES, PriceTable
from domain.token_budget import BudgetExceeded, TokenBudget

log = logging.getLogger(__name__)

# Tokens the chat format adds once per call to prime the reply.
REPLY_PRIMING_TOKENS = 3
CONTEXT_PREFIX = "Earlier in this conversation:\n"
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
SUMMARY_INSTRUCTIONS = (
    "You keep the memory of a conversation between a user and an assistant. Summarise "
    "the exchanges below (and the summary so far, if given) into one concise note for "
    "the assistant's own later use: keep facts, names, numbers, decisions, the user's "
    "preferences and open questions; drop pleasantries. Write in the conversation's "
    "language, in plain prose, without a preamble, in at most {words} words."
)
SUMMARY_WINDOW_SHARE = 20  # a summary may take up to this share of the token window
BUDGET_EXHAUSTED = "The service's daily token budget is used up; please try again tomorrow."
PII_REJECTED = (
    "The request contains personal data ({kinds}); this service does not send personal "
    "data to the model. Please remove it and ask again."
)
TOO_LATE = "The model could not answer before the request's deadline."
STORE_RETRY_MAX_DELAY = 5.0
RECORDING_GRACE = 10.0  # seconds a closing service waits for paid replies to be recorded
PII_INLINE_CHARS = 4000  # longer texts are searched for personal data in a thread
ERASURE_CHECK_INTERVAL = 2.0  # seconds between looks for other replicas' erasures
ERASURE_CHECK_OVERLAP = timedelta(seconds=30)
SUMMARIES_KEPT = 1000  # summaries made whose save has not succeeded yet
CACHE_SWEEP_AGAIN = 20.0  # seconds: a reply in flight at an erasure has been recorded by then


@dataclass(frozen=True)
class ChatPolicy:
    """The settings the use case applies to every request."""

    model: str = "gpt-4o-mini"
    vision_model: str = "gpt-4o-latest"
    max_tokens: int = 4000
    temperature: float = 0.7
    daily_token_limit: int = 1_000_000
    context_max_tokens: int = 8000
    context_max_turns: int = 10
    budget_chunk_tokens: int = 100_000
    budget_lease_expiry: float = 60.0
    conversation_cache_size: int = 10_000
    retention_days: int = 30  # older turns have expired: never context
    # Personal data in what is sent to the model: "off", "mask" (placeholders the
    # reply's are put back from) or "block" (refused with pii_rejected).
    pii_mode: str = "mask"
    prices: PriceTable = field(default_factory=lambda: PriceTable(DEFAULT_PRICES))
    # The response cache (when there is one) and single-flight: which calls may
    # share a reply (temperature 0 only, unless any), and whose ("user", "global").
    cache_ttl: float = 3600.0
    cache_any_temperature: bool = False
    cache_scope: str = "user"
    # History that no longer fits the window: "truncate" drops the oldest turns,
    # "summarize" has `summary_model` summarise them into one note.
    context_strategy: str = "summarize"
    summary_model: str = "gpt-4o-mini"
    # Requests below this priority (or asking for it) go through the Batch API.
    batch_priority: int | None = None

    def shareable(self, call: ModelCall) -> bool:
        """Whether identical calls may get one reply: only a deterministic one."""
        return call.temperature == 0 or self.cache_any_temperature


class TurnAsDict(Transcoding):
    type = Turn
    name = "turn"

    def encode(self, obj: Turn) -> dict[str, Any]:
        return obj.__dict__

    def decode(self, data: dict[str, Any]) -> Turn:
        return Turn(**data)


class ChatRecords(Application):
    """Conversations and token budgets, stored as events in one notification log.

    With DATA_KEYS_TOPIC in its settings (a function of the recorder and the
    settings that gives the DataKeys), conversations' personal fields are also
    encrypted per owner and day, so that they can be crypto-shredded.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.data_keys: DataKeys | None = None
        if isinstance(self.mapper, PersonalDataMapper):
            open_keys = resolve_topic(self.env["DATA_KEYS_TOPIC"])
            self.data_keys = keys = open_keys(self.recorder, self.env)
            initial = base64.b64decode(self.env["DATA_KEYS_STORE_KEY"])
            self.mapper.attach(keys, keys.store_key(initial))

    def construct_mapper(self) -> Mapper[Any]:
        base = super().construct_mapper()
        return PersonalDataMapper(base) if self.env.get("DATA_KEYS_TOPIC") else base

    name = "chatergpt"
    # Loading replays from the latest snapshot, so a busy day's budget or a long
    # conversation does not make every request slower than the one before.
    snapshotting_intervals = {Conversation: 50, TokenBudget: 20}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(TurnAsDict())

    @property
    def reads_are_local(self) -> bool:
        """True for an embedded store, where a read takes microseconds and no network."""
        return self.env.get("PERSISTENCE_MODULE", "") in {
            "eventsourcing.sqlite", "eventsourcing.popo", ""
        }

    @property
    def persistence_name(self) -> str:
        """"sqlite", "postgres" or "popo": which store holds the events."""
        module = self.env.get("PERSISTENCE_MODULE", "") or "eventsourcing.popo"
        return module.rsplit(".", 1)[-1]

    def conversation(self, conversation_id: UUID) -> Conversation | None:
        try:
            conversation: Conversation = self.repository.get(conversation_id)
        except AggregateNotFoundError:
            return None
        if self.data_keys is not None and conversation.user_email not in SHREDDED:
            # A conversation from before data keys: its new events become shreddable.
            if self.data_keys.owner_of(str(conversation_id)) is None:
                self.data_keys.register(str(conversation_id), data_owner(conversation.user_email))
        return conversation

    def budget(self, scope: str, day: str) -> TokenBudget:
        try:
            return self.repository.get(TokenBudget.create_id(scope, day))
        except AggregateNotFoundError:
            return TokenBudget(scope, day)


class ChatService:
    """Answers chat requests: context, budget, rate limit, model, record.

    Per request: one read of the conversation, one group-committed write before
    the model call (what was asked, with which context) and one after (the
    reply); the budget is kept in memory against a lease (BudgetLedger).
    """

    def __init__(
        self,
        records: ChatRecords,
        model: LanguageModel,
        counter: TokenCounter,
        rate_limiter: RateLimiter,
        clock: Clock,
        policy: ChatPolicy,
        tracer: trace.Tracer | None = None,
        pii: PiiMasker | None = None,
        cache: ResponseCache | None = None,
        slots: ModelSlots | None = None,
        batches: BatchCollector | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.records = records
        self.metrics = metrics  # what batches use (live calls are measured by the model)
        self.cache = cache
        self.slots = slots or ModelSlots(rate_limiter)
        self.batches = batches
        self.flights: SingleFlight[ModelReply] = SingleFlight()
        # Erased owners in the look-back window: when first swept, None once swept again.
        self._cache_sweeps: dict[str, float | None] = {}
        self._summaries: dict[str, dict[str, Any]] = {}  # by summary call digest
        self.tracer = tracer or trace.get_tracer(__name__)
        self.pii = pii if policy.pii_mode != "off" else None
        self.model = model
        self.counter = counter
        self.rate_limiter = rate_limiter
        self.clock = clock
        self.policy = policy
        self.writer = GroupCommitter(records)
        # Conversations saved by this worker, by id (insertion order = recency).
        self._cache: dict[UUID, Conversation] = {}
        self._recording: set[asyncio.Future[tuple[dict[str, Any], Conversation]]] = set()
        # Erasures are looked for from a little before start (clocks of replicas differ).
        self._erasures_since = iso_timestamp_of(clock.now() - ERASURE_CHECK_OVERLAP)
        self._erasures_checked = float("-inf")
        self.ledger = BudgetLedger(
            load_budget=records.budget,
            save=records.save,
            clock=clock,
            daily_limit=policy.daily_token_limit,
            chunk_tokens=policy.budget_chunk_tokens,
            lease_expiry=policy.budget_lease_expiry,
        )

    async def handle(self, request: ChatRequest) -> ChatResponse:
        """The response to a request (DESIGN §2), success or error.

        A request that already ended is answered from its recorded outcome, so a
        redelivered record never reaches the model twice.
        """
        started = time.perf_counter()
        cid = conversation_id(request.user_email, request.conversation_id)
        reservation = f"{cid}/{request.request_id}"  # request ids are producers' keys
        try:
            outcome, conversation = await self._answer(request, cid, reservation, started)
        finally:
            # Whatever happened (an error, a cancellation at shutdown), a hold
            # still open is given back; a settled one is not touched again.
            self.ledger.release(reservation)
        # Only a conversation whose every change is saved is kept for its next turn.
        self._remember(conversation)
        return response_of(outcome)

    async def _answer(
        self, request: ChatRequest, cid: UUID, reservation: str, started: float
    ) -> tuple[dict[str, Any], Conversation]:
        rid = request.request_id
        while True:
            conversation = await self._load(cid, request)
            outcome = conversation.outcome(rid)
            if outcome is not None:
                log.info("request %s already answered; replaying", rid)
                return outcome, conversation
            if self.pii is not None and self.policy.pii_mode == "block":
                texts = [request.message, request.system_prompt or "", request.context or ""]
                kinds = await self._off_loop_if_long(texts, self.pii.found_in, *texts)
                if kinds:  # refused before anything of it is stored or sent
                    message = PII_REJECTED.format(kinds=", ".join(sorted(k.lower() for k in kinds)))
                    return await self._fail(cid, conversation, rid, "pii_rejected", message, started)
            # Deciding on a summary and building the call count the same texts:
            # each is encoded once per request.
            count = functools.cache(self.counter.for_model(self.model_for(request)).count)
            summarised = None
            if self.policy.context_strategy == "summarize" and not conversation.is_pending(rid):
                summarised = await self._compact_if_needed(
                    request, conversation, reservation, count
                )
            call, history_turns, estimate = self.build_call(request, conversation, count)

            def receive(c: Conversation) -> None:
                if not c.is_pending(rid) and c.outcome(rid) is None:
                    self._receive(c, request, call, history_turns)

            share = self._share_key(request, call)
            if share is not None and not conversation.is_pending(rid):
                shared = await self._shared_reply(share, self._time_left(request))
                if shared is not None:  # no model call: no budget, no cost
                    reply, source = shared
                    outcome, conversation = await self._conclude(cid, conversation, rid, lambda c: (
                        receive(c), self._record_reply(c, rid, reply, started, source)
                    ))
                    return answered(outcome, reply), conversation
            receive(conversation)
            try:
                # While the model is down, holds of requests waiting for it fill the
                # budget; wait for them as long as this request may wait at all.
                await self.ledger.reserve(reservation, estimate, max_wait=self._time_left(request))
            except BudgetExceeded as error:
                log.warning("request %s refused: %s", rid, error)
                return await self._fail(
                    cid, conversation, rid, "budget_exceeded", BUDGET_EXHAUSTED, started
                )
            try:
                await self._save(conversation)
                if summarised is not None:
                    self._summaries.pop(summarised, None)  # saved: no retry needs it
                break
            except RecordConflictError:
                self.ledger.release(reservation)  # another worker wrote: decide again

        batched = self.batched(request)
        flight_key = f"{share[0]}/{share[1]}" if share is not None and not batched else None
        flight = None
        while flight_key is not None and flight is None:
            flight = self.flights.lead(flight_key)
            if flight is None:
                # The same call is on its way to the model for another request: wait
                # for its reply; if that call fails, lead (or follow) the next one.
                shared_reply = await self.flights.follow(flight_key, self._time_left(request))
                if shared_reply is None and self._time_left(request) == 0:
                    break  # past its own deadline: the call below says so at once
                if shared_reply is not None:
                    self.ledger.release(reservation)
                    outcome, conversation = await self._conclude(cid, conversation, rid, lambda c: (
                        self._record_reply(c, rid, shared_reply, started, "shared")
                    ))
                    return answered(outcome, shared_reply), conversation
        landed: ModelReply | None = None
        try:
            outcome, conversation, landed = await self._call(
                request, cid, conversation, call, reservation, estimate, started, batched
            )
            if (
                landed is not None and share is not None and self.cache is not None
                and outcome.get("response") != ERASED  # the user was erased meanwhile
            ):
                # Before the flight lands: an identical request arriving meanwhile
                # finds the reply in the cache or in flight, never neither.
                await self.cache.put(*share, landed, self.policy.cache_ttl)
        finally:
            if flight is not None and flight_key is not None:
                self.flights.land(flight_key, flight, landed)
        return answered(outcome, landed) if landed is not None else outcome, conversation

    async def _call(
        self,
        request: ChatRequest,
        cid: UUID,
        conversation: Conversation,
        call: ModelCall,
        reservation: str,
        estimate: int,
        started: float,
        batched: bool,
    ) -> tuple[dict[str, Any], Conversation, ModelReply | None]:
        """Ask the model (live or in a batch) and record how it ended; the reply, if any."""
        rid = request.request_id
        started_call = False

        async def call_model() -> ModelReply:
            nonlocal started_call, conversation
            masked, session = await self._off_loop_if_long(
                [message.text for message in call.messages], self._masked, call
            )
            if batched:
                # Cut short, a batched call is not counted here: its batch goes on, and
                # whoever answers the request next holds and settles its tokens.
                conversation, reply = await self._by_batch(cid, conversation, rid, masked)
            else:
                async with self.slots.slot(request.priority):
                    started_call = True
                    waiting_at_circuit.set(False)
                    reply = await self.model.complete(masked)
                if reply.rate_limits is not None:
                    self.rate_limiter.observe(reply.rate_limits)
            if session is not None:  # the user sees their own data again
                reply = replace(reply, text=session.unmask(reply.text))
            return reply

        deadline = self._time_left(request)
        if deadline == 0:  # already past it (while following another's call, say)
            self.ledger.release(reservation)
            log.warning("request %s passed its deadline", rid)
            outcome, conversation = await self._fail(
                cid, conversation, rid, "upstream_error", TOO_LATE, started
            )
            return outcome, conversation, None
        try:
            try:
                async with asyncio.timeout(deadline) as budget_of_time:
                    reply = await call_model()
            except (TimeoutError, asyncio.CancelledError):
                if started_call and not waiting_at_circuit.get():
                    # The provider may bill a call cut short: count it as its estimate
                    # (not one cut short while an open circuit still held it back).
                    self.ledger.settle(reservation, estimate)
                raise
        except Exception as error:
            self.ledger.release(reservation)
            if isinstance(error, TimeoutError) and budget_of_time.expired():
                error_type, message = "upstream_error", TOO_LATE
                log.warning("request %s passed its deadline", rid)
            elif isinstance(error, ModelError):
                error_type, message = error.error_type, error.message
                log.warning("model call failed for %s: %s", rid, error_type)
            else:
                error_type, message = "upstream_error", "The model call failed unexpectedly."
                log.exception("model call failed unexpectedly for %s", rid)
            outcome, conversation = await self._fail(
                cid, conversation, rid, error_type, message, started
            )
            return outcome, conversation, None
        self.ledger.settle(reservation, reply.prompt_tokens + reply.completion_tokens)
        if batched and self.metrics is not None:
            self.metrics.model_used(
                model=reply.model, prompt_tokens=reply.prompt_tokens,
                cached_tokens=reply.cached_tokens, completion_tokens=reply.completion_tokens,
                cost=self.policy.prices.cost(reply.model, reply.prompt_tokens, reply.cached_tokens,
                                             reply.completion_tokens, batch=True),
            )
        # A paid reply is recorded even if the caller gives up now (its partition
        # was taken away, say): whoever answers the request next finds it answered.
        source = "batch" if batched else "model"
        recording = asyncio.ensure_future(self._conclude(
            cid, conversation, rid,
            lambda c: self._record_reply(c, rid, reply, started, source),
        ))
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)
        outcome, conversation = await asyncio.shield(recording)
        return outcome, conversation, reply

    # Sharing replies: the cache and single-flight ----------------------------------

    def _share_key(self, request: ChatRequest, call: ModelCall) -> tuple[str, str] | None:
        """(scope, digest) of a call whose reply may be shared; None if it may not."""
        if not self.policy.shareable(call):
            return None
        scope = "global" if self.policy.cache_scope == "global" else data_owner(request.user_email)
        return scope, call_digest(call)

    async def _shared_reply(
        self, share: tuple[str, str], wait: float | None
    ) -> tuple[ModelReply, str] | None:
        """A reply to the same call: being answered right now (waiting for it at most
        `wait` seconds), or cached; and which."""
        reply = await self.flights.follow(f"{share[0]}/{share[1]}", wait)
        if reply is not None:
            return reply, "shared"
        if self.cache is not None:
            reply = await self.cache.get(*share)
            if reply is not None:
                return reply, "cache"
        return None

    async def forget_cached(self, user_email: str) -> int:
        """Drop the user's cached replies (the user was erased)."""
        if self.cache is None:
            return 0
        return await self.cache.forget(data_owner(user_email))

    # The Batch API ------------------------------------------------------------------

    def batched(self, request: ChatRequest) -> bool:
        """Whether a request is answered through the Batch API."""
        if self.batches is None:
            return False
        threshold = self.policy.batch_priority
        return request.batch or (threshold is not None and request.priority < threshold)

    async def _by_batch(
        self, cid: UUID, conversation: Conversation, rid: str, call: ModelCall
    ) -> tuple[Conversation, ModelReply]:
        """Send the call in the next batch (unless it already was: a redelivery) and
        wait for the batch to end; the conversation as saved, and the reply."""
        assert self.batches is not None
        sent = conversation.pending_batch(rid)
        if sent is None:
            # A random id names the call in the batch: the provider learns nothing
            # about whose it is.
            custom_id = uuid4().hex
            submitting = asyncio.ensure_future(
                self._submit_to_batch(cid, conversation, rid, custom_id, call)
            )
            self._recording.add(submitting)
            submitting.add_done_callback(self._recording.discard)
            try:
                conversation, batch_id = await asyncio.shield(submitting)
            except asyncio.CancelledError:
                # Not sent yet: taken out, nothing is paid. Sent: it is billed, and the
                # task records BatchSubmitted, so whoever answers next waits for it.
                if self.batches.withdraw(call.model, custom_id):
                    submitting.cancel()
                raise
            sent = (batch_id, custom_id)
        return conversation, await self.batches.result(*sent)

    async def _submit_to_batch(
        self, cid: UUID, conversation: Conversation, rid: str, custom_id: str, call: ModelCall
    ) -> tuple[Conversation, str]:
        """Send the call in its model's next batch and record BatchSubmitted (the batch
        is billed: a conflict or a store outage is waited out, never a failure)."""
        assert self.batches is not None
        batch_id = await self.batches.submit(custom_id, call)
        while conversation.is_pending(rid) and conversation.pending_batch(rid) is None:
            conversation.submit_to_batch(rid, batch_id, custom_id, iso_timestamp(self.clock))
            try:
                await self._save(conversation)
            except (RecordConflictError, PersistenceError):
                conversation = await self._reload(cid)
        return conversation, batch_id

    async def _off_loop_if_long(
        self, texts: list[str], work: Callable[..., Any], *args: Any
    ) -> Any:
        """Run PII detection over `texts` in a thread when they are long: a pasted
        table of numbers takes seconds, and the event loop (and the health server)
        must not wait for it."""
        if sum(map(len, texts)) > PII_INLINE_CHARS:
            return await asyncio.to_thread(work, *args)
        return work(*args)

    def _masked(self, call: ModelCall) -> tuple[ModelCall, PiiSession | None]:
        """The call with personal data replaced by placeholders (one mapping for all
        its texts), and the session that puts them back; as it is when not masking."""
        if self.pii is None:
            return call, None
        session = self.pii.session()
        texts = session.mask_all([message.text for message in call.messages])
        if not session.found:
            return call, None
        trace.get_current_span().set_attribute("chater.pii_masked", sum(session.found.values()))
        messages = [replace(m, text=text) for m, text in zip(call.messages, texts)]
        return replace(call, messages=messages), session

    def _time_left(self, request: ChatRequest) -> float | None:
        """Seconds until the request's deadline (None: no deadline)."""
        if request.deadline is None:
            return None
        return max(request.deadline - self.clock.now().timestamp(), 0.0)

    async def housekeeping(self) -> None:
        """Called now and then by the driver: budget leases held too long or spent,
        and conversations kept in memory whose user another replica erased."""
        await self.ledger.housekeeping()
        keys = self.records.data_keys
        if keys is None or time.monotonic() - self._erasures_checked < ERASURE_CHECK_INTERVAL:
            return
        self._erasures_checked = time.monotonic()
        # Windows overlap: an erasure committed while we looked, or stamped by a
        # replica whose clock is a little behind, is seen the next time.
        since = self._erasures_since
        self._erasures_since = iso_timestamp_of(self.clock.now() - ERASURE_CHECK_OVERLAP)
        try:
            owners = await asyncio.to_thread(keys.erased_since, since)
            erased = [cid for owner in owners for cid in keys.conversations_of(owner)]
        except PersistenceError:
            self._erasures_since = since  # the store is down: look again next time
            return
        if erased:
            self.forget(erased)
            forget_ciphers = getattr(self.records.mapper, "forget", None)
            if forget_ciphers is not None:
                forget_ciphers()
        if self.cache is not None:
            await self._sweep_cache(owners)

    async def _sweep_cache(self, erased_owners: list[str]) -> None:
        """Drop erased users' cached replies: when an erasure is first seen, and once
        more CACHE_SWEEP_AGAIN seconds later, for a reply that was in flight at the
        erasure (in any replica) and cached after it."""
        assert self.cache is not None
        now = time.monotonic()
        for owner in erased_owners:
            if owner not in self._cache_sweeps:  # first seen
                await self.cache.forget(owner)
                self._cache_sweeps[owner] = now
            elif (seen := self._cache_sweeps[owner]) is not None and now - seen >= CACHE_SWEEP_AGAIN:
                await self.cache.forget(owner)
                self._cache_sweeps[owner] = None  # swept twice: done
        for owner in set(self._cache_sweeps) - set(erased_owners):
            del self._cache_sweeps[owner]  # out of the window

    async def close(self) -> None:
        """Record the replies still being written, settle this worker's budget
        lease and close the model client."""
        if self._recording:
            await asyncio.wait(set(self._recording), timeout=RECORDING_GRACE)
        await self.ledger.close()
        await self.model.close()
        if self.cache is not None:
            await self.cache.close()
        if self.batches is not None:
            await self.batches.close()

    # Steps ----------------------------------------------------------------------

    async def _load(self, cid: UUID, request: ChatRequest) -> Conversation:
        conversation = self._cache.pop(cid, None)
        if conversation is None:
            with self.tracer.start_as_current_span("load conversation", attributes={
                "db.operation.name": "load", "chater.store": self.records.persistence_name,
            }) as span:
                if self.records.reads_are_local:
                    # Measured: handing a SQLite read to a thread costs more than the read.
                    conversation = self.records.conversation(cid)
                else:
                    conversation = await asyncio.to_thread(self.records.conversation, cid)
                span.set_attribute("chater.found", conversation is not None)
        return conversation or Conversation(request.user_email, request.conversation_id)

    async def _save(self, conversation: Conversation) -> None:
        """Save the conversation's new events (group-committed with other requests')."""
        with self.tracer.start_as_current_span("save conversation", attributes={
            "db.operation.name": "save", "chater.store": self.records.persistence_name,
            "chater.events": len(conversation.pending_events),
        }):
            await self.writer.save(conversation)

    def forget(self, conversation_ids: list[str]) -> None:
        """Drop kept copies (their user was erased): the next request reads the store."""
        for cid in conversation_ids:
            self._cache.pop(UUID(cid), None)

    def _remember(self, conversation: Conversation) -> None:
        """Keep a saved conversation for its next turn, the least recent going first.

        A copy that another worker has since changed is not a risk: saving on it
        conflicts, and the request is decided again on the stored state before
        the model is called.
        """
        self._cache[conversation.id] = conversation
        while len(self._cache) > self.policy.conversation_cache_size:
            self._cache.pop(next(iter(self._cache)))

    async def _conclude(
        self,
        cid: UUID,
        conversation: Conversation,
        request_id: str,
        record: Callable[[Conversation], None],
    ) -> tuple[dict[str, Any], Conversation]:
        """Record how a request ended; on a conflict, on the conversation as stored."""
        while True:
            if conversation.outcome(request_id) is None:
                record(conversation)
            outcome = conversation.outcome(request_id)
            assert outcome is not None
            try:
                await self._save(conversation)
                return outcome, conversation
            except RecordConflictError:
                conversation = await self._reload(cid)

    async def _reload(self, cid: UUID) -> Conversation:
        """The stored conversation; the model was paid, so wait out a store outage."""
        delay = 0.1
        while True:
            try:
                stored = await asyncio.to_thread(self.records.conversation, cid)
                assert stored is not None, "a conflict implies a stored conversation"
                return stored
            except PersistenceError as error:
                log.warning("event store unavailable (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_DELAY)

    def _receive(
        self, conversation: Conversation, request: ChatRequest, call: ModelCall, history_turns: int
    ) -> None:
        conversation.receive_message(
            request_id=request.request_id,
            message=request.message,
            image_digests=[image.digest for image in request.images],
            model=call.model,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            system_prompt=request.system_prompt,
            caller_context=request.context,
            history_turns=history_turns,
        )

    def _record_reply(
        self,
        conversation: Conversation,
        request_id: str,
        reply: ModelReply,
        started: float,
        source: str = "model",
    ) -> None:
        """Record a reply; one this request did not pay for (`source` "cache" or
        "shared") is recorded as using no tokens and costing nothing."""
        if not conversation.is_pending(request_id):
            return  # concluded by another worker meanwhile
        erased = conversation.pending_message(request_id) == ERASED
        paid = source in ("model", "batch")
        prompt, cached, completion = (
            (reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens) if paid else (0, 0, 0)
        )
        conversation.record_reply(
            request_id=request_id,
            reply=ERASED if erased else reply.text,
            model=reply.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            finish_reason=reply.finish_reason,
            answered_at=iso_timestamp(self.clock),
            processing_time=round(time.perf_counter() - started, 3),
            cached_tokens=cached,
            cost=self.policy.prices.cost(
                reply.model, prompt, cached, completion, batch=source == "batch"
            ) if paid else 0.0,
            source=source,
        )

    async def _fail(
        self,
        cid: UUID,
        conversation: Conversation,
        request_id: str,
        error_type: str,
        message: str,
        started: float,
    ) -> tuple[dict[str, Any], Conversation]:
        """Record that a request failed, and how: its outcome, and the conversation saved."""
        return await self._conclude(
            cid, conversation, request_id,
            lambda c: self._record_failure(c, request_id, error_type, message, started),
        )

    def _record_failure(
        self,
        conversation: Conversation,
        request_id: str,
        error_type: str,
        message: str,
        started: float,
    ) -> None:
        conversation.record_failure(
            request_id=request_id,
            error_type=error_type,
            error_message=message,
            failed_at=iso_timestamp(self.clock),
            processing_time=round(time.perf_counter() - started, 3),
        )

    # Context and estimates ----------------------------------------------------

    def build_call(
        self,
        request: ChatRequest,
        conversation: Conversation,
        count: Callable[[str], int] | None = None,
    ) -> tuple[ModelCall, int, int]:
        """The model call, how many stored turns it carries, and the most it can spend.

        The system prompt, the summary of compacted turns and the new message are
        always sent; the stored history, then the caller's context string, fill
        what is left of the token window.
        """
        policy = self.policy
        model = self.model_for(request)
        counter = self.counter.for_model(model)
        # Selecting the history and estimating the call count the same texts:
        # each is encoded once per request.
        count = count or functools.cache(counter.count)
        not_before = self._not_before()
        messages: list[ChatMessage] = []
        if request.system_prompt:
            messages.append(ChatMessage("system", request.system_prompt))
        summary = conversation.context_summary(not_before)
        if summary is not None:
            messages.append(ChatMessage("system", SUMMARY_PREFIX + summary))
        room = self._history_room(request, summary, count)
        history = conversation.recent_turns(
            policy.context_max_turns, max(room, 0), count, not_before=not_before
        )
        room -= sum(turn_tokens(turn, count) for turn in history)
        if request.context:
            room -= count(CONTEXT_PREFIX) + MESSAGE_OVERHEAD_TOKENS
            if room > 0:
                context = counter.tail(request.context, room)
                messages.append(ChatMessage("system", CONTEXT_PREFIX + context))
        for turn in history:
            messages.append(ChatMessage("user", turn.user_message))
            messages.append(ChatMessage("assistant", turn.reply))
        messages.append(ChatMessage("user", request.message, request.images))
        call = ModelCall(
            model=model,
            messages=messages,
            max_tokens=request.max_tokens or policy.max_tokens,
            temperature=(
                request.temperature if request.temperature is not None else policy.temperature
            ),
        )
        return call, len(history), self.estimate_tokens(call, count)

    def _history_room(
        self, request: ChatRequest, summary: str | None, count: Callable[[str], int]
    ) -> int:
        """Tokens of the window left for stored turns once the new message, its
        images, the system prompt and the summary are counted."""
        model = self.model_for(request)
        room = self.policy.context_max_tokens - (
            count(request.message)
            + MESSAGE_OVERHEAD_TOKENS
            + sum(self._image_tokens(image, model) for image in request.images)
        )
        if request.system_prompt:
            room -= count(request.system_prompt) + MESSAGE_OVERHEAD_TOKENS
        if summary is not None:
            room -= count(SUMMARY_PREFIX + summary) + MESSAGE_OVERHEAD_TOKENS
        return room

    def _not_before(self) -> str:
        """Turns answered before this have expired (retention): never context."""
        return iso_timestamp_of(self.clock.now() - timedelta(days=self.policy.retention_days))

    @staticmethod
    def _image_tokens(image: Image, model: str) -> int:
        """What an image costs the model, by OpenAI's published tile rule."""
        return image_tokens(image.width, image.height, model)

    # Context compression ------------------------------------------------------------

    async def _compact_if_needed(
        self,
        request: ChatRequest,
        conversation: Conversation,
        reservation: str,
        count: Callable[[str], int],
    ) -> str | None:
        """When stored turns no longer fit the window, have the cheapest model
        summarise the older ones (with any earlier summary) into one note, recorded
        as ContextCompacted. Half the window is kept for recent turns, so that the
        next requests fit without a new summary. If the summary cannot be had
        (the model fails, the budget is spent), the oldest turns are just dropped.
        Returns the summary call's digest when it compacted."""
        policy = self.policy
        not_before = self._not_before()
        turns = conversation.unsummarised_turns(not_before)
        previous = conversation.context_summary(not_before)
        room = max(self._history_room(request, previous, count), 0)
        if len(conversation.recent_turns(policy.context_max_turns, room, count, not_before)) == len(turns):
            return None
        keep = conversation.recent_turns(policy.context_max_turns // 2, room // 2, count, not_before)
        older = turns[: len(turns) - len(keep)]
        if not older:
            return None
        call = summary_call(policy.summary_model, previous, older, policy.context_max_tokens)
        # A summary made for this very call whose save then conflicted is reused,
        # not paid for again (its cost is recorded with it, once).
        digest = call_digest(call)
        made = self._summaries.get(digest)
        if made is not None:
            conversation.compact(**made, compacted_at=iso_timestamp(self.clock))
            return digest
        estimate = self.estimate_tokens(call)
        hold = f"{reservation}/summary"
        started_call = False
        with self.tracer.start_as_current_span("compact context", attributes={
            "chater.turns_summarised": len(older), "gen_ai.request.model": call.model,
        }):
            try:
                # Within the request's own deadline: a summary is not worth missing it.
                async with asyncio.timeout(self._time_left(request)):
                    await self.ledger.reserve(hold, estimate, max_wait=0)
                    masked, session = await self._off_loop_if_long(
                        [message.text for message in call.messages], self._masked, call
                    )
                    async with self.slots.slot(request.priority):
                        started_call = True
                        reply = await self.model.complete(masked)
            except (BudgetExceeded, ModelError, TimeoutError) as error:
                self._give_back(hold, estimate, started_call and isinstance(error, TimeoutError))
                log.warning("context not summarised (%s): the oldest turns are dropped",
                            type(error).__name__)
                return None
            except BaseException:
                self._give_back(hold, estimate, started_call)
                raise
        self.ledger.settle(hold, reply.prompt_tokens + reply.completion_tokens)
        made = {
            "summary": session.unmask(reply.text) if session is not None else reply.text,
            "through_request_id": older[-1].request_id,
            "content_from": conversation.summary_from if previous else older[0].answered_at,
            "turns_covered": len(older),
            "model": reply.model,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "cost": policy.prices.cost(
                reply.model, reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens
            ),
        }
        conversation.compact(**made, compacted_at=iso_timestamp(self.clock))
        # Kept until the save that carries it succeeds (see _answer).
        self._summaries[digest] = made
        while len(self._summaries) > SUMMARIES_KEPT:
            self._summaries.pop(next(iter(self._summaries)))
        return digest

    def _give_back(self, hold: str, estimate: int, billed: bool) -> None:
        """End a hold whose call did not answer: a call cut short may still be billed
        by the provider, and counts as its estimate; any other is released."""
        if billed:
            self.ledger.settle(hold, estimate)
        else:
            self.ledger.release(hold)

    def model_for(self, request: ChatRequest) -> str:
        """The model a request asks for, or the default for its kind (text, vision)."""
        if request.model:
            return request.model
        return self.policy.vision_model if request.images else self.policy.model

    def estimate_tokens(self, call: ModelCall, count: Callable[[str], int] | None = None) -> int:
        """The most a call can spend: its prompt as the model counts it, plus max_tokens."""
        count = count or self.counter.for_model(call.model).count
        prompt = REPLY_PRIMING_TOKENS + sum(
            count(message.text)
            + MESSAGE_OVERHEAD_TOKENS
            + sum(self._image_tokens(image, call.model) for image in message.images)
            for message in call.messages
        )
        return prompt + call.max_tokens


def answered(outcome: dict[str, Any], reply: ModelReply) -> dict[str, Any]:
    """The outcome for the caller: when the user was erased while the reply was on its
    way, the store keeps only its accounting, and the caller still gets the answer."""
    if outcome.get("response") == ERASED and reply.text != ERASED:
        return {**outcome, "response": reply.text}
    return outcome


def call_digest(call: ModelCall) -> str:
    """What identifies a call's reply: model, parameters and every message (role,
    text, images by digest), hashed."""
    canonical = json.dumps([
        call.model, call.max_tokens, call.temperature,
        [[m.role, m.text, [image.digest for image in m.images]] for m in call.messages],
    ], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def summary_call(
    model: str,
    previous: str | None,
    turns: list[Turn],
    window: int,
) -> ModelCall:
    """The call that summarises `turns` (after an earlier summary, if any)."""
    parts = [f"Summary so far:\n{previous}"] if previous else []
    for turn in turns:
        images = f" [{turn.image_count} image(s)]" if turn.image_count else ""
        parts.append(f"User:{images} {turn.user_message}\nAssistant: {turn.reply}")
    max_tokens = max(window // SUMMARY_WINDOW_SHARE, 64)
    return ModelCall(
        model=model,
        messages=[
            ChatMessage("system", SUMMARY_INSTRUCTIONS.format(words=max_tokens * 3 // 4)),
            ChatMessage("user", "\n\n".join(parts)),
        ],
        max_tokens=max_tokens,
        temperature=0.0,
    )


def iso_timestamp(clock: Clock) -> str:
    """UTC time as the contract shows it, e.g. 2024-01-01T00:00:00.000Z."""
    return iso_timestamp_of(clock.now())


def response_of(outcome: dict[str, Any]) -> ChatResponse:
    """The response for a recorded outcome."""
    if "error" in outcome:
        return ChatResponse.failure(
            outcome["error"]["type"], outcome["error"]["message"],
            outcome["timestamp"], outcome["processing_time"],
        )
    usage = outcome["usage"]
    return ChatResponse.answer(
        text=outcome["response"], model=outcome["model"],
        usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]),
        cost_usd=outcome["cost_usd"], finish_reason=outcome["finish_reason"],
        timestamp=outcome["timestamp"], processing_time=outcome["processing_time"],
        source="batch" if outcome.get("batch") else "cache" if outcome.get("cached") else "model",
    )


def rejection(error_type: str, message: str, clock: Clock, started: float) -> ChatResponse:
    """The response to a request rejected before it reached the use case."""
    return ChatResponse.failure(
        error_type, message, iso_timestamp(clock), round(time.perf_counter() - started, 3)
    )
