"""The chat use case: answer one request with the conversation's history as context.

Per request, in order:
1. `_prepare`, one change of the conversation: a request id recorded for other
   content is refused; a request that already ended is answered from its
   recorded outcome (a redelivered record never reaches the model twice); one
   whose model call another worker may still land waits for that call's outcome
   (`_plan`: its partition moved, that worker stopped or died) and then is
   answered from it, or takes the call over once that call's time is up; a
   request that can never fit its model or the day's budget is refused (neither
   refusal is recorded, but for one received already, which then ends); personal data is refused (PII_MODE=block); the history is
   compacted when it no longer fits; the call is planned; the message is
   received; a reply shared by an identical call ends it, or else the call's
   worst case is held in the day's budget. Saved before the model is called:
   what was asked, with which context.
2. `_ask`: the model answers, live or through the Batch API, unless an identical
   call in flight answers first (single-flight).
3. `_conclude`, a second change: the reply or the failure is recorded, and the
   response is built from what was recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property, partial
from typing import Any
from uuid import UUID, uuid4

from opentelemetry import trace

from application.batch_answers import BatchAnswers, BatchHold
from application.batching import BatchCollector
from application.budget_ledger import BudgetLedger
from application.budgets import Budgets, refusal
from application.call_masking import CallMasking
from application.chat_policy import ChatPolicy
from application.compaction import Compactor
from application.context_window import ContextWindow
from application.contract import ChatRequest, ChatResponse
from application.model_slots import ModelSlots
from application.outcome_recorder import OutcomeRecorder
from application.pii import PiiMasker
from application.ports import (
    AggregateStore,
    CallProgress,
    Clock,
    LanguageModel,
    Metrics,
    ModelCall,
    ModelError,
    ModelReply,
    RateLimiter,
    ResponseCache,
    TokenCounter,
)
from application.reply_sharing import Lead, ReplySharing, Share
from application.request_digest import request_digest
from domain.conversation import Conversation, RequestIdReused, conversation_id
from domain.token_budget import BudgetExceeded

log = logging.getLogger(__name__)

PII_REJECTED = (
    "The request contains personal data ({kinds}); this service does not send personal "
    "data to the model. Please remove it and ask again."
)
REQUEST_ID_REUSED = "request id already used for a different request"
TOO_LATE = "The model could not answer before the request's deadline."
UNEXPECTED = "The model call failed unexpectedly."
RECORDING_GRACE = 10.0  # seconds a closing service waits for paid replies to be recorded
# Following another worker's model call: the store is read again after this wait,
# doubling up to the longest.
FOLLOW_FIRST_WAIT = 0.2
FOLLOW_LONGEST_WAIT = 2.0
# A call sent later than this after it was recorded as out (it waited for its turn)
# is recorded again as sent then, so that others wait for it from then.
SEND_SLACK = 1.0


class _TakenOver(Exception):
    """Another worker took this worker's call over before it was sent (it waited
    for its turn longer than a call may take): it is not sent."""


@dataclass
class _Job:
    """One request on its way through the use case."""

    request: ChatRequest
    cid: UUID
    started: float
    # Through the Batch API, parked in a batch (decided once, at its hold), and
    # its worst case held apart in the day's budget.
    parking: bool | None = None
    batch_hold: BatchHold | None = None
    landed: bool = False  # the model's reply is in hand (being recorded)
    call_since: float | None = None  # epoch seconds the conversation says its call is out since

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def reservation(self) -> str:
        return f"{self.cid}/{self.request.request_id}"  # request ids are producers' keys

    @cached_property
    def digest(self) -> str:
        """What the request asks, hashed once (a conflict decides again)."""
        return request_digest(self.request)


@dataclass(frozen=True)
class _Plan:
    """What `_prepare` decided: a response already, or the call to make."""

    response: ChatResponse | None = None
    call: ModelCall | None = None
    estimate: int = 0
    share: Share | None = None
    summarised: str | None = None  # the digest of a summary saved with it
    sent_in_batch: tuple[str, str] | None = None
    # Another call for the request may still land until then (epoch seconds):
    # the store is read again meanwhile.
    other_call_until: float | None = None


class ChatService:
    """Answers chat requests: context, budget, rate limit, model, record.

    Per request: one read of the conversation (none when this worker kept it),
    one group-committed write before the model call and one after; the budget is
    held in memory against a lease (BudgetLedger).
    """

    def __init__(
        self,
        conversations: AggregateStore[Conversation],
        ledger: BudgetLedger | Budgets,
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
        batch_records: AggregateStore[Any] | None = None,
        max_parked: int = 10_000,
        worker: str | None = None,
    ) -> None:
        self.conversations = conversations
        # Who this worker process is, in the conversations: requests it received
        # (or took over) are called for by it, and it knows which of those calls
        # are still out (`_calling`: request id -> its call's progress).
        self.worker = worker or uuid4().hex
        self._calling: dict[str, CallProgress] = {}
        # Every daily limit (service tokens, dollars, per user); a plain ledger is the
        # service's token budget alone.
        self.ledger = ledger if isinstance(ledger, Budgets) else Budgets(ledger, policy.prices)
        self.model = model
        self.rate_limiter = rate_limiter
        self.clock = clock
        self.policy = policy
        self.tracer = tracer or trace.get_tracer(__name__)
        self.slots = slots or ModelSlots(rate_limiter)
        self.window = ContextWindow(policy, counter)
        self.masking = CallMasking(pii, policy.pii_mode)
        self.sharing = ReplySharing(policy, cache)
        # Paid replies being recorded, and batch submissions: they outlive a
        # cancelled request, and the service waits for them when it closes.
        self._recording: set[asyncio.Future[Any]] = set()
        self.batches = BatchAnswers(
            batches, conversations, clock, policy, self._recording,
            parked=batch_records, ledger=self.ledger, metrics=metrics, max_parked=max_parked,
        )
        self.recorder = OutcomeRecorder(clock, policy.prices)
        self.compactor = Compactor(
            policy, self.window, self.ledger, self.masking, self.slots, model, clock, self.tracer
        )

    def model_for(self, request: ChatRequest) -> str:
        return self.window.model_for(request)

    def batched(self, request: ChatRequest) -> bool:
        return self.batches.batched(request)

    async def handle(self, request: ChatRequest) -> ChatResponse:
        """The response to a request, success or error."""
        cid = conversation_id(request.user_email, request.conversation_id)
        job = _Job(request, cid, time.perf_counter())
        try:
            while True:
                plan = await self._plan(job)
                if plan.summarised is not None:
                    self.compactor.saved(plan.summarised)
                if plan.response is not None:
                    if plan.sent_in_batch is not None:  # parked already: is its batch polled?
                        # A hold this job took is that request's own (the same id):
                        # its batch concludes it.
                        job.batch_hold = None
                        await self.batches.adopt(
                            job.cid, job.request_id, plan.sent_in_batch, request.deadline
                        )
                    return plan.response
                try:
                    return await self._ask_from_here(job, plan)
                except _TakenOver:  # then its outcome is waited for, or found
                    log.info("request %s: another worker took its call over", job.request_id)
                    self.conversations.evict([job.cid])
        finally:
            # Whatever happened (an error, a cancellation at shutdown), a hold
            # still open is given back; a settled one is not touched again.
            self.ledger.release(job.reservation)
            if job.batch_hold is not None and job.batch_hold.made:
                # Held apart by this job and not handed to a batch: a conflict
                # made `_prepare` end otherwise (another replica answered the
                # request), or it failed before parking. Nobody else concludes it.
                self._record_in_background(self._give_back(job.batch_hold))

    async def _plan(self, job: _Job) -> _Plan:
        """`_prepare`d; while another worker's model call for the request may still
        land (its partition moved here meanwhile, say), the store is read again
        now and then until that call's outcome is recorded (then answered from
        it) or its time is up (then this worker calls)."""
        request, wait = job.request, FOLLOW_FIRST_WAIT
        while True:
            plan: _Plan = await self.conversations.change(
                job.cid, partial(self._prepare, job),  # type: ignore[arg-type]
                create=partial(Conversation, request.user_email, request.conversation_id),
            )
            if plan.other_call_until is None:
                return plan
            if wait == FOLLOW_FIRST_WAIT:
                log.info("request %s: a call for it made elsewhere may still land; "
                         "waiting for its outcome", request.request_id)
            left = plan.other_call_until - self.clock.now().timestamp()
            await asyncio.sleep(max(min(wait, left), 0.0))
            wait = min(wait * 2, FOLLOW_LONGEST_WAIT)
            self.conversations.evict([job.cid])  # what the other worker recorded

    async def _ask_from_here(self, job: _Job, plan: _Plan) -> ChatResponse:
        """`_ask`, known to be out from this worker while it is; cut short before
        its reply came, it is recorded as abandoned, so that whoever answers the
        request next does not wait for it."""
        assert plan.call is not None
        rid = job.request_id
        self._calling[rid] = plan.call.progress
        try:
            return await self._ask(job, plan)
        except asyncio.CancelledError:
            if not job.landed and not job.parking:  # a batch goes on
                self._record_in_background(self._abandoned(job))
            raise
        finally:
            if self._calling.get(rid) is plan.call.progress:
                del self._calling[rid]

    def call_sent(self, request_id: str) -> bool:
        """Whether this worker's model call for the request is out now (handed to
        the provider, not held back before it): cut short, it may be paid for."""
        progress = self._calling.get(request_id)
        return progress is not None and progress.sent

    async def _abandoned(self, job: _Job) -> None:
        def record(conversation: Conversation) -> None:
            rid = job.request_id
            if conversation.is_pending(rid):
                call = conversation.pending_call(rid)
                if call is not None and call[1] == self.worker:
                    conversation.abandon_call(rid, self.clock.now().isoformat())

        try:
            await self.conversations.change(job.cid, record)
        except Exception:  # then the next owner waits for the call's time to be up
            log.warning("could not record that the call for %s was abandoned", job.request_id)

    async def _give_back(self, hold: BatchHold) -> None:
        try:
            await self.batches.give_back(hold)
        except Exception as error:  # the store is down: the hold stays for the day
            log.warning("could not give back a batch request's budget hold: %s", error)

    def _record_in_background(self, work: Any) -> None:
        """Recording that outlives a cancelled request; `close` waits for it."""
        recording = asyncio.ensure_future(work)
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)

    # 1. Prepare --------------------------------------------------------------------

    async def _prepare(self, job: _Job, conversation: Conversation) -> _Plan:
        request, rid = job.request, job.request_id
        # Decided again after a conflict: what an earlier try held is given back.
        self.ledger.release(job.reservation)
        try:
            conversation.check_same_request(rid, job.digest)
        except RequestIdReused:  # not recorded: the first request's record stands
            log.warning("request %s refused: its id was used for a different request", rid)
            return _Plan(self._rejection(job, REQUEST_ID_REUSED))
        outcome = conversation.outcome(rid)
        if outcome is not None:
            log.info("request %s already answered; replaying", rid)
            return _Plan(ChatResponse.of(outcome))
        if conversation.is_pending(rid) and conversation.pending_batch(rid) is not None:
            log.info("request %s is parked in its batch; it is answered when the batch ends", rid)
            return _Plan(
                ChatResponse.parked_in_batch(self.clock.now(), job.started),
                sent_in_batch=conversation.pending_batch(rid),
            )
        other_call_until = self._other_call_until(job, conversation)
        if other_call_until is not None:
            return _Plan(other_call_until=other_call_until)
        count = self.window.counting(request)
        misfit = self.window.misfit(request, count, self.ledger.daily_limit_for(request.user_email))
        if misfit is not None:  # the caller's mistake, every time: not recorded ...
            log.warning("request %s refused: it cannot fit its model or the daily budget", rid)
            if conversation.is_pending(rid):  # ... unless received already (by an
                # earlier version): then it ends, so that it is not pending for ever.
                return _Plan(self.recorder.failure(
                    rid, job.started, "invalid_request", misfit, conversation
                ))
            return _Plan(self._rejection(job, misfit))
        if self.masking.blocks:
            kinds = await self.masking.found_in(
                request.message, request.system_prompt or "", request.context or ""
            )
            if kinds:  # refused before anything of it is stored or sent
                message = PII_REJECTED.format(kinds=", ".join(sorted(k.lower() for k in kinds)))
                return _Plan(self.recorder.failure(
                    rid, job.started, "pii_rejected", message, conversation,
                    request_digest=job.digest,
                ))
        not_before = self.window.not_before(self.clock.now())
        fresh = not conversation.is_pending(rid)
        summarised = None
        if self.policy.context_strategy == "summarize" and fresh:
            summarised = await self.compactor.compact_if_needed(
                request, conversation, job.reservation, count, not_before, self._time_left(request)
            )
        planned = self.window.plan(request, conversation, count, not_before)
        share = self.sharing.share_of(request, planned.call)
        now = self.clock.now()  # from when this worker's call may be out
        if fresh:
            conversation.receive_message(
                request_id=rid,
                message=request.message,
                image_digests=[image.digest for image in request.images],
                model=planned.call.model,
                max_tokens=planned.call.max_tokens,
                temperature=planned.call.temperature,
                system_prompt=request.system_prompt,
                caller_context=request.context,
                history_turns=planned.history_turns,
                request_digest=job.digest,
                received_at=now.isoformat(),
                worker=self.worker,
            )
            job.call_since = now.timestamp()
        elif not self._parks(job) and conversation.pending_batch(rid) is None:
            # Received before (by another worker, or by this one before it
            # abandoned the call): this worker's call is the one out from now.
            conversation.take_over_call(rid, now.isoformat(), self.worker)
            job.call_since = now.timestamp()
        if share is not None and fresh:
            shared = await self.sharing.find(share, self._time_left(request))
            if shared is not None:  # no model call: no budget, no cost
                reply, source = shared
                response = self.recorder.reply(rid, job.started, reply, source, conversation)
                return _Plan(response, summarised=summarised)
        try:
            # While the model is down, holds of requests waiting for it fill the
            # budget; wait for them as long as this request may wait at all.
            await self._hold(job, planned.estimate, planned.call.model)
        except BudgetExceeded as error:
            log.warning("request %s refused: %s", rid, error)
            response = self.recorder.failure(
                rid, job.started, "budget_exceeded", refusal(error), conversation
            )
            return _Plan(response, summarised=summarised)
        return _Plan(
            call=planned.call, estimate=planned.estimate, share=share, summarised=summarised,
        )

    async def _hold(self, job: _Job, tokens: int, model: str) -> None:
        """Hold the request's worst case: apart in the day's budget for a request
        parked in a batch (it must not keep a lease open for hours), in this
        worker's lease otherwise. A batch request with no room left among the
        parked ones (BATCH_MAX_WAITING) is answered live."""
        if self._parks(job):
            # The same hold on every replica. Taken again after a conflict, it
            # stays in the day of this job's first hold (concluded there, also
            # across midnight), and stays this job's if this job made it. When a
            # conflict makes `_prepare` end otherwise, `handle` gives back a hold
            # this job made (one parked meanwhile by another replica is that
            # request's: its batch concludes it).
            first = job.batch_hold
            hold = await self.batches.hold(
                job.cid, job.request_id, tokens, self._time_left(job.request),
                day=first.day if first is not None else None,
            )
            if first is not None and first.made and not hold.made:
                hold = replace(hold, made=True)
            job.batch_hold = hold
        else:
            await self.ledger.reserve(
                job.reservation, tokens, max_wait=self._time_left(job.request),
                user=job.request.user_email, models=(model,),
            )

    def _parks(self, job: _Job) -> bool:
        """Whether the request is parked in a batch: a batch request, while there is
        room among the parked ones and no dollar or per-user limit is set (their holds
        would span hours and replicas); decided once (a conflict decides again the same
        way). Any other batch request is answered live, like any other request."""
        if job.parking is None:
            job.parking = (self.batches.batched(job.request) and self.batches.has_room()
                           and self.ledger.allows_batches)
        return job.parking

    def _other_call_until(self, job: _Job, conversation: Conversation) -> float | None:
        """Until when (epoch seconds) a model call for this pending request may still
        land, made by another worker (or by this one, still out): from when it may
        have gone out, the call's whole time, bounded by the request's deadline.
        None when there is none to wait for: the request is not pending, a batch
        has it (its own path), or this worker's own call ended without a reply."""
        rid = job.request_id
        if (
            not conversation.is_pending(rid)
            or conversation.pending_batch(rid) is not None
            or self._parks(job)
        ):
            return None
        call = conversation.pending_call(rid)
        if call is None:
            return None
        since, worker = call
        if worker == self.worker and rid not in self._calling:
            return None
        try:
            until = (datetime.fromisoformat(since).timestamp()
                     + self.policy.call_timeout + self.policy.call_slack)
        except ValueError:
            return None
        if job.request.deadline is not None:
            until = min(until, job.request.deadline)
        return until if self.clock.now().timestamp() < until else None

    def _rejection(self, job: _Job, message: str) -> ChatResponse:
        """An invalid_request response, recorded nowhere."""
        return ChatResponse.rejection("invalid_request", message, self.clock.now(), job.started)

    # 2. Ask ------------------------------------------------------------------------

    async def _ask(self, job: _Job, plan: _Plan) -> ChatResponse:
        """The model's answer (or an identical call's), recorded; or, for a batch
        request, the call sent in a batch and the request parked."""
        if job.parking:
            return await self._park(job, plan)
        if plan.share is None:
            response, _ = await self._call_once(job, plan)
            return response
        lead = await self.sharing.lead(plan.share, partial(self._time_left, job.request))
        if lead.reply is not None:
            self.ledger.release(job.reservation)
            return await self._conclude(job, partial(
                self.recorder.reply, job.request_id, job.started, lead.reply, "shared"
            ))
        return await self._call_sharing(job, plan, lead)

    async def _park(self, job: _Job, plan: _Plan) -> ChatResponse:
        """Send the call in the next batch and park the request: its record is
        finished, and whichever replica sees its batch end answers it (see
        BatchAnswers). A call in which personal data was masked is answered live
        instead: the placeholders' values are never stored, so nobody could put
        them back in a reply that comes hours later."""
        assert plan.call is not None and job.batch_hold is not None
        hold = job.batch_hold
        if self._time_left(job.request) == 0:
            log.warning("request %s passed its deadline", job.request_id)
            await self.batches.give_back(hold)
            job.batch_hold = None
            return await self._fail(job, "upstream_error", TOO_LATE)
        masked, session = await self.masking.mask(plan.call)
        if session is not None:
            return await self._answer_live_instead(job, plan, hold)
        job.batch_hold = None  # the batch's from now on (`park` gives it back if withdrawn)
        try:
            await self.batches.park(job.cid, job.request_id, masked, hold, job.request.deadline)
        except ModelError as error:  # the batch was not created: nothing is paid
            await self.batches.give_back(hold)
            return await self._fail(job, *self._failure_of(job, error, False))
        log.info("request %s parked in a batch", job.request_id)
        return ChatResponse.parked_in_batch(self.clock.now(), job.started)

    async def _answer_live_instead(self, job: _Job, plan: _Plan, hold: BatchHold) -> ChatResponse:
        await self.batches.give_back(hold)
        job.batch_hold = None
        try:
            await self.ledger.reserve(
                job.reservation, plan.estimate, max_wait=self._time_left(job.request),
                user=job.request.user_email, models=(plan.call.model,),
            )
        except BudgetExceeded as error:
            log.warning("request %s refused: %s", job.request_id, error)
            return await self._fail(job, "budget_exceeded", refusal(error))
        response, _ = await self._call_once(job, plan)
        return response

    async def _call_sharing(self, job: _Job, plan: _Plan, lead: Lead) -> ChatResponse:
        """A call whose reply others may share: it lands this request's flight (and
        goes into the cache) once recorded."""
        assert plan.share is not None
        response: ChatResponse | None = None
        reply: ModelReply | None = None
        try:
            response, reply = await self._call_once(job, plan)
            return response
        finally:
            # Not cached when the user was erased meanwhile.
            keep = response is not None and response.ok and not response.withheld
            await self.sharing.land(plan.share, lead, reply, keep)

    async def _call_once(self, job: _Job, plan: _Plan) -> tuple[ChatResponse, ModelReply | None]:
        """Ask the model and record how it ended; the reply, if any."""
        assert plan.call is not None
        time_left = self._time_left(job.request)
        if time_left == 0:  # already past it (while following another's call, say)
            log.warning("request %s passed its deadline", job.request_id)
            return await self._fail(job, "upstream_error", TOO_LATE), None
        try:
            try:
                async with asyncio.timeout(time_left) as deadline:
                    reply = await self._model_reply(job, plan)
            except (TimeoutError, asyncio.CancelledError):
                if plan.call.progress.sent:
                    # The provider may bill a call cut short: count it as its estimate.
                    self.ledger.settle(job.reservation, plan.estimate)
                raise
        except _TakenOver:
            if plan.call.progress.sent:  # an earlier attempt went out: it may be billed
                self.ledger.settle(job.reservation, plan.estimate)
            else:
                self.ledger.release(job.reservation)
            raise
        except Exception as error:
            self.ledger.release(job.reservation)
            return await self._fail(job, *self._failure_of(job, error, deadline.expired())), None
        job.landed = True
        self.ledger.settle(job.reservation, reply.prompt_tokens + reply.completion_tokens, reply)
        # A paid reply is recorded even if the caller gives up now (its partition
        # was taken away, say): whoever answers the request next finds it answered.
        recording = asyncio.ensure_future(
            self._conclude(job, partial(
                self.recorder.reply, job.request_id, job.started, reply, "model"
            ))
        )
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)
        return await asyncio.shield(recording), reply

    async def _model_reply(self, job: _Job, plan: _Plan) -> ModelReply:
        """The live call's reply (a batch request is parked instead, `_park`, and its
        reply recorded by a poller)."""
        assert plan.call is not None
        masked, session = await self.masking.mask(plan.call)
        plan.call.progress.tokens = plan.estimate  # what the rate limiter counts
        plan.call.progress.resending = partial(self._note_late_send, job)
        async with self.slots.slot(job.request.priority, plan.call, job.request.produced_at):
            await self._note_late_send(job)
            plan.call.progress.sent = True
            reply = await self.model.complete(masked)
        self.slots.settle(plan.call, reply)
        if reply.rate_limits is not None:
            self.rate_limiter.observe(reply.rate_limits)
        if session is not None:  # the user sees their own data again
            reply = replace(reply, text=session.unmask(reply.text))
        return reply

    async def _note_late_send(self, job: _Job) -> None:
        """A call that waited (for its turn, an open circuit, a retry's backoff)
        and goes more than SEND_SLACK after it was last recorded as out is
        recorded as sent now, before it goes: whoever finds the request pending
        waits for it the call's whole time from now, not from when it was
        received. Unless another worker took the call over meanwhile (or answered
        the request): then it does not go (_TakenOver). The store's optimistic
        concurrency decides which of the two came first."""
        now = self.clock.now()
        slack = min(SEND_SLACK, self.policy.call_slack)  # within what others allow
        if job.call_since is None or now.timestamp() - job.call_since <= slack:
            return

        def record(conversation: Conversation) -> bool:
            rid = job.request_id
            if not conversation.is_pending(rid):
                return False
            call = conversation.pending_call(rid)
            if call is None or call[1] != self.worker:
                return False
            conversation.send_call(rid, now.isoformat(), self.worker)
            return True

        if not await self.conversations.change(job.cid, record):
            raise _TakenOver(job.request_id)
        job.call_since = now.timestamp()

    @staticmethod
    def _failure_of(job: _Job, error: Exception, past_deadline: bool) -> tuple[str, str]:
        """(error type, message) for a model call that failed."""
        if isinstance(error, TimeoutError) and past_deadline:
            log.warning("request %s passed its deadline", job.request_id)
            return "upstream_error", TOO_LATE
        if isinstance(error, ModelError):
            log.warning("model call failed for %s: %s", job.request_id, error.error_type)
            return error.error_type, error.message
        log.exception("model call failed unexpectedly for %s", job.request_id)
        return "upstream_error", UNEXPECTED

    # 3. Conclude -------------------------------------------------------------------

    async def _conclude(
        self, job: _Job, record: Callable[[Conversation], ChatResponse]
    ) -> ChatResponse:
        """Record how a request ended (on the conversation as stored) and answer."""
        return await self.conversations.change(job.cid, record)

    async def _fail(self, job: _Job, error_type: str, message: str) -> ChatResponse:
        return await self._conclude(job, partial(
            self.recorder.failure, job.request_id, job.started, error_type, message
        ))

    # Around the requests -------------------------------------------------------------

    def _time_left(self, request: ChatRequest) -> float | None:
        """Seconds until the request's deadline (None: no deadline)."""
        if request.deadline is None:
            return None
        return max(request.deadline - self.clock.now().timestamp(), 0.0)

    async def housekeeping(self) -> None:
        """Called now and then by the driver: budget leases held too long or spent;
        the rate limiter hears this replica is alive (also while it is idle)."""
        self.rate_limiter.keep_alive()
        await self.ledger.housekeeping()

    async def close(self) -> None:
        """Record the replies still being written, settle this worker's budget
        lease and close the model client."""
        if self._recording:
            await asyncio.wait(set(self._recording), timeout=RECORDING_GRACE)
        await self.ledger.close()
        await self.rate_limiter.close()
        await self.model.close()
        await self.sharing.close()
        await self.batches.close()

