"""Requests answered through the provider's Batch API: later, at half the price,
and held by no worker meanwhile.

A request's call goes into its model's next batch (see BatchCollector) under a
random custom id, so the provider learns nothing of whose it is. Once the batch
exists, its requests are recorded in the store (a ParkedBatch, listed in the
ParkedBatches index) and then BatchSubmitted on each conversation (from a
shielded task, through conflicts and outages: the batch is billed). From then on
the request is *parked*: its record is finished (its offset may be committed),
and a redelivery finds it waiting in its batch instead of paying again. A request
withdrawn before its batch is sent costs nothing.

Every replica polls the parked batches (`poll`, every BATCH_POLL_INTERVAL). When
a batch ends (or a request's deadline passes first), each request's outcome is
recorded on its conversation; the event store's optimistic concurrency lets one
replica's change record it, and that replica alone settles its budget hold and
produces the response. A replica that recorded an outcome and stopped before the
response went out is relieved by any other after DELIVERY_GRACE seconds.

A batch request's worst case is held apart in the day's TokenBudget (never in a
worker's lease, which it would keep open for a day), and settled with the real
usage or released by whoever concludes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID, uuid4

from application.batching import BatchCollector
from application.budgets import Budgets
from application.chat_policy import ChatPolicy
from application.contract import ChatRequest, ChatResponse, iso_timestamp_of
from application.outcome_recorder import OutcomeRecorder
from application.ports import AggregateStore, Clock, Metrics, ModelCall, ModelError, ModelReply
from domain.conversation import Answer, Conversation
from domain.parked_batches import PARKED_INDEX_ID, ParkedBatch, ParkedBatches, parked_batch_id

log = logging.getLogger(__name__)

TOO_LATE = "The model could not answer before the request's deadline."
NO_ANSWER = "The batch ended without an answer to this request."
# Seconds after which a recorded but undelivered outcome is delivered by any replica
# (the one that recorded it stopped before its response went out).
DELIVERY_GRACE = 120.0
CONCLUDED_AT_ONCE = 50  # conversation changes of one poll under way together
ENDED_KEPT = 8  # ended batches whose outcomes are kept while requests of them wait

# Produces a response on the response topic (key: the request id); done once delivered.
Deliver = Callable[[str, ChatResponse], Awaitable[None]]


@dataclass(frozen=True)
class BatchHold:
    """A batch request's worst case, held apart in the day's budget."""

    reservation: str
    day: str
    tokens: int
    # Whether this request's own try made the hold (False: another replica's try
    # of the same request had held it already, and may still need it).
    made: bool = False


@dataclass
class _Verdict:
    """What a poll decided for one parked request."""

    custom_id: str
    entry: dict[str, Any]
    response: ChatResponse | None = None  # to deliver
    mine: bool = False  # this replica's change recorded it
    done: bool = False  # nothing (more) to deliver for it from this batch
    reply: ModelReply | None = None


class BatchAnswers:
    def __init__(
        self,
        collector: BatchCollector | None,
        conversations: AggregateStore[Conversation],
        clock: Clock,
        policy: ChatPolicy,
        recordings: set[asyncio.Future[Any]],
        parked: AggregateStore[Any] | None = None,
        ledger: Budgets | None = None,
        metrics: Metrics | None = None,
        max_parked: int = 10_000,
    ) -> None:
        self.collector = collector
        self.conversations = conversations
        self.clock = clock
        self.policy = policy
        # Shielded work that outlives a cancelled request; awaited at close.
        self.recordings = recordings
        self.parked = parked
        self.ledger = ledger
        self.metrics = metrics
        self.max_parked = max_parked
        self.recorder = OutcomeRecorder(clock, policy.prices)
        # Requests in the open batches as the index said at the last poll (plus
        # those this replica parked since): the bound on parking is checked on it.
        self.parked_seen = 0
        self._submitting = 0
        # Outcomes this replica recorded whose response is not delivered yet.
        self._owned: dict[str, ChatResponse] = {}
        # Requests whose response this replica delivered and whose batch has not
        # recorded it yet (that write failed): marked at the next poll, never
        # delivered again. Custom id -> batch id.
        self._unmarked: dict[str, str] = {}
        # The outcomes of the latest batches seen ended, while some of their
        # requests are still to be answered.
        self._ended: dict[str, tuple[str, dict[str, ModelReply | ModelError]]] = {}
        if collector is not None and parked is not None:
            collector.on_created = self._opened

    # Which requests, and room ---------------------------------------------------------

    def batched(self, request: ChatRequest) -> bool:
        """Whether a request is answered through the Batch API."""
        if self.collector is None:
            return False
        threshold = self.policy.batch_priority
        return request.batch or (threshold is not None and request.priority < threshold)

    def has_room(self, on_their_way: int = 0) -> bool:
        """Whether one more request may be parked (BATCH_MAX_WAITING): the open
        batches as last seen in the store, plus this replica's requests on their
        way into one (`on_their_way`: as its driver counts them, fetched and not
        yet parked). Without room a batch request is answered live. Replicas
        decide on what the store said at their last poll: together they may go
        past the bound by what they park between two polls."""
        collecting = self.collector.collecting if self.collector is not None else 0
        return self.parked_seen + max(collecting, self._submitting, on_their_way) < self.max_parked

    @staticmethod
    def hold_id(cid: UUID, request_id: str) -> str:
        """The budget reservation of a request's batch hold: the same on every
        replica, and nothing of the user (request ids are producers' keys)."""
        return "batch:" + hashlib.sha256(f"{cid}/{request_id}".encode()).hexdigest()[:32]

    async def hold(
        self, cid: UUID, request_id: str, tokens: int, max_wait: float | None,
        day: str | None = None,
    ) -> BatchHold:
        """Hold a batch request's worst case apart in today's budget, or in `day`'s
        (where an earlier try held it: a retry after midnight keeps its day).
        BudgetExceeded when there is no room."""
        assert self.ledger is not None
        reservation = self.hold_id(cid, request_id)
        # Not for as long as a batch request may wait (a day): its lane waits meanwhile.
        patience = self.ledger.max_wait if max_wait is None else min(max_wait, self.ledger.max_wait)
        held_in, made = await self.ledger.take_apart(reservation, tokens, max_wait=patience, day=day)
        return BatchHold(reservation, held_in, tokens, made)

    async def give_back(self, hold: BatchHold) -> None:
        """Release a hold whose request ended without being parked."""
        assert self.ledger is not None
        await self.ledger.release_apart(hold.day, hold.reservation)

    # Parking ------------------------------------------------------------------------

    async def park(
        self, cid: UUID, request_id: str, call: ModelCall, hold: BatchHold,
        deadline: float | None,
    ) -> tuple[str, str]:
        """Send the call in the next batch; (batch id, custom id) once the batch and
        BatchSubmitted are recorded. Raises the ModelError of a batch not created."""
        assert self.collector is not None
        custom_id = uuid4().hex
        ticket = {
            "conversation_id": str(cid), "request_id": request_id, "hold": hold.reservation,
            "day": hold.day, "tokens": hold.tokens, "deadline": deadline,
        }
        submitting = asyncio.ensure_future(self._submit(cid, request_id, custom_id, call, ticket))
        self.recordings.add(submitting)
        submitting.add_done_callback(self.recordings.discard)
        self._submitting += 1
        try:
            batch_id = await asyncio.shield(submitting)
        except asyncio.CancelledError:
            # Not sent yet: taken out, nothing is paid. Sent: it is billed, and the
            # task records BatchSubmitted, so the request stays parked.
            if self.collector.withdraw(call.model, custom_id):
                submitting.cancel()
                giving_back = asyncio.ensure_future(self.give_back(hold))
                self.recordings.add(giving_back)
                giving_back.add_done_callback(self.recordings.discard)
            raise
        finally:
            self._submitting -= 1
        return batch_id, custom_id

    async def _submit(
        self, cid: UUID, request_id: str, custom_id: str, call: ModelCall, ticket: dict[str, Any]
    ) -> str:
        assert self.collector is not None
        batch_id = await self.collector.submit(custom_id, call, ticket)
        submitted_at = iso_timestamp_of(self.clock.now())

        def record(conversation: Conversation) -> None:
            if conversation.is_pending(request_id) and conversation.pending_batch(request_id) is None:
                conversation.submit_to_batch(request_id, batch_id, custom_id, submitted_at)

        await self.conversations.change(cid, record)
        return batch_id

    async def _opened(self, batch_id: str, model: str, tickets: list[tuple[str, Any]]) -> None:
        """A batch exists: its requests are recorded before anyone learns its id."""
        assert self.parked is not None
        requests = {custom_id: ticket for custom_id, ticket in tickets}
        opened_at = iso_timestamp_of(self.clock.now())
        await self.parked.change(
            parked_batch_id(batch_id), _unchanged,
            create=partial(ParkedBatch, batch_id, model, requests, opened_at),
        )
        await self.parked.change(
            PARKED_INDEX_ID, partial(_list, batch_id, len(requests)), create=ParkedBatches
        )
        self.parked_seen += len(requests)

    async def adopt(
        self, cid: UUID, request_id: str, sent: tuple[str, str], deadline: float | None
    ) -> None:
        """A redelivered request parked in `sent` (batch id, custom id): make sure its
        batch is polled. Requests parked by a version that held them instead of
        recording a ParkedBatch are found so (their budget was held in a lease of
        that version's, counted in full when it expired: none is held here)."""
        if self.parked is None:
            return
        batch_id, custom_id = sent
        entry = {"conversation_id": str(cid), "request_id": request_id, "hold": None,
                 "day": None, "tokens": 0, "deadline": deadline}
        at = iso_timestamp_of(self.clock.now())
        adopted = await self.parked.change(
            parked_batch_id(batch_id), partial(_adopt, custom_id, entry, at),
            create=partial(ParkedBatch, batch_id, "", {}, at),
        )
        if adopted:
            log.info("a request parked in batch %s is polled from now on", batch_id)
            await self.parked.change(PARKED_INDEX_ID, partial(_list, batch_id, 1),
                                     create=ParkedBatches)

    # Polling ------------------------------------------------------------------------

    async def poll(self, deliver: Deliver) -> int:
        """One round over the open batches: ask the provider about each, conclude the
        requests whose batch ended (or whose deadline passed) and deliver their
        responses. The number of responses this replica delivered."""
        if self.collector is None or self.parked is None:
            return 0
        # Outcomes recorded since the poll started are not this poll's to redeliver
        # (DELIVERY_GRACE), however long it takes.
        poll_started = self.clock.now()
        index = await self.parked.change(PARKED_INDEX_ID, _open_batches, create=ParkedBatches)
        self.parked_seen = sum(index.values())
        delivered = 0
        for batch_id in index:
            try:
                delivered += await self._poll_batch(batch_id, deliver, poll_started)
            except Exception:  # one batch must not stop the others' answers
                log.exception("batch %s could not be polled this time", batch_id)
        return delivered

    async def _poll_batch(self, batch_id: str, deliver: Deliver, poll_started: datetime) -> int:
        assert self.collector is not None and self.parked is not None
        batch: ParkedBatch = await self.parked.change(parked_batch_id(batch_id), _unchanged_self)
        waiting = batch.undelivered()
        for custom_id, of_batch in list(self._unmarked.items()):
            if of_batch == batch_id and custom_id not in waiting:  # marked meanwhile
                del self._unmarked[custom_id]
        # Delivered by this replica already: only its mark is still to be written.
        unmarked = [custom_id for custom_id in waiting if custom_id in self._unmarked]
        results: dict[str, ModelReply | ModelError] | None = None
        status = "open"
        ended = self._ended.get(batch_id)
        if ended is not None:  # its files were read already: not again each round
            status, results = ended
        elif waiting:
            try:
                state = await self.collector.model.poll(batch_id)
                results, status = state.results, state.status
            except ModelError as error:
                log.warning("batch %s could not be polled (%s)", batch_id, error.error_type)
            if results is not None:
                self._ended[batch_id] = (status, results)
                while len(self._ended) > ENDED_KEPT:
                    self._ended.pop(next(iter(self._ended)))
        now = self.clock.now()
        started = time.perf_counter() - max(
            0.0, (now - datetime.fromisoformat(batch.opened_at.replace("Z", "+00:00"))).total_seconds()
        )
        due = []
        for custom_id, entry in waiting.items():
            deadline = entry.get("deadline")
            if custom_id in self._unmarked:
                continue
            if results is not None:
                due.append((custom_id, entry, results.get(custom_id) or ModelError(
                    "upstream_error", NO_ANSWER)))
            elif deadline is not None and now.timestamp() > deadline:
                due.append((custom_id, entry, ModelError("upstream_error", TOO_LATE)))
            elif custom_id in self._owned:
                due.append((custom_id, entry, None))
        verdicts: list[_Verdict] = []
        for start in range(0, len(due), CONCLUDED_AT_ONCE):
            verdicts += await asyncio.gather(*(
                self._conclude(batch_id, custom_id, entry, outcome, started, poll_started)
                for custom_id, entry, outcome in due[start:start + CONCLUDED_AT_ONCE]
            ))
        delivered = await self._hand_out(
            batch_id, [v for v in verdicts if v.response is not None], results is not None,
            deliver,
        )
        finished = unmarked + [verdict.custom_id for verdict in verdicts if verdict.done]
        if finished or not waiting:
            at = iso_timestamp_of(self.clock.now())
            closed = await self.parked.change(
                parked_batch_id(batch_id), partial(_delivered, finished, status, at)
            )
            for custom_id in finished:
                self._owned.pop(custom_id, None)
                self._unmarked.pop(custom_id, None)
            if closed:
                self._ended.pop(batch_id, None)
                await self.parked.change(PARKED_INDEX_ID, partial(_unlist, batch_id))
                log.info("batch %s: every request answered", batch_id)
        return delivered

    async def _conclude(
        self, batch_id: str, custom_id: str, entry: dict[str, Any],
        outcome: ModelReply | ModelError | None, started: float, poll_started: datetime,
    ) -> _Verdict:
        """Record the request's outcome on its conversation, unless it was recorded
        (by another replica, say) or is not this batch's to give."""
        verdict = _Verdict(custom_id, entry)
        owned = self._owned.get(custom_id)
        if owned is not None:  # recorded by this replica, not delivered yet
            verdict.response, verdict.mine = owned, True
            return verdict
        request_id = entry["request_id"]

        def decide(conversation: Conversation) -> None:
            verdict.response, verdict.mine, verdict.done, verdict.reply = None, False, False, None
            if conversation.is_pending(request_id):
                sent = conversation.pending_batch(request_id)
                if sent is None or outcome is None:
                    return  # BatchSubmitted is still on its way: next round
                if sent != (batch_id, custom_id):
                    verdict.done = True  # sent again in another batch, which answers it
                    return
                if isinstance(outcome, ModelReply):
                    verdict.response = self.recorder.reply(
                        request_id, started, outcome, "batch", conversation
                    )
                    verdict.reply = outcome
                else:
                    verdict.response = self.recorder.failure(
                        request_id, started, outcome.error_type, outcome.message, conversation
                    )
                verdict.mine = True
                return
            recorded = conversation.outcome(request_id)
            if recorded is None:
                verdict.done = True  # never received here: nothing to answer
                return
            ended = recorded.answered_at if isinstance(recorded, Answer) else recorded.failed_at
            # Measured from the poll's start: what another replica recorded (and
            # delivered) while this poll went on is not this poll's to deliver.
            age = poll_started.timestamp() - datetime.fromisoformat(
                ended.replace("Z", "+00:00")).timestamp()
            if age > DELIVERY_GRACE:  # its recorder stopped before delivering it
                verdict.response = ChatResponse.of(recorded)

        try:
            await self.conversations.change(UUID(entry["conversation_id"]), decide)
        except Exception as error:
            log.warning("a batch request could not be concluded yet: %s", error)
            verdict.response, verdict.done = None, False
            return verdict
        if verdict.mine and verdict.response is not None:
            self._owned[custom_id] = verdict.response
            if verdict.reply is not None:
                self._count_spending(verdict.reply)
        return verdict

    async def _hand_out(
        self, batch_id: str, ready: list[_Verdict], batch_ended: bool, deliver: Deliver
    ) -> int:
        """Settle the requests' holds (once, whoever does it; one write of each
        day's budget) and deliver their responses; how many were delivered. What
        fails (the store, the broker) is tried again at the next poll; a response
        delivered is not delivered again, even if its batch's mark of it fails."""
        assert self.ledger is not None
        by_day: dict[str, dict[str, int | None]] = {}
        for verdict in ready:
            entry, response = verdict.entry, verdict.response
            assert response is not None
            if entry.get("hold") is None:  # adopted: no hold of its own (see `adopt`)
                continue
            if response.ok:
                used: int | None = response.usage.total_tokens if response.usage is not None else 0
            elif batch_ended:  # a failed line is not billed
                used = None
            else:  # given up while its batch goes on: it may be billed, counted in full
                used = int(entry["tokens"])
            by_day.setdefault(entry["day"], {})[entry["hold"]] = used
        try:
            for day, used_by_hold in by_day.items():
                await self.ledger.conclude_apart(day, used_by_hold)
        except Exception as error:
            log.warning("batch requests' budget holds could not be settled yet: %s", error)
            return 0
        sent = await asyncio.gather(
            *(deliver(v.entry["request_id"], v.response) for v in ready if v.response is not None),
            return_exceptions=True,
        )
        delivered = 0
        for verdict, outcome in zip(ready, sent):
            if isinstance(outcome, BaseException):
                log.warning("the answer to a batch request could not be delivered yet: %s", outcome)
                continue
            verdict.done = True
            self._owned.pop(verdict.custom_id, None)
            self._unmarked[verdict.custom_id] = batch_id
            delivered += 1
        return delivered

    def _count_spending(self, reply: ModelReply) -> None:
        if self.metrics is None:
            return
        self.metrics.model_used(
            model=reply.model, prompt_tokens=reply.prompt_tokens,
            cached_tokens=reply.cached_tokens, completion_tokens=reply.completion_tokens,
            cost=self.policy.prices.cost(reply.model, reply.prompt_tokens, reply.cached_tokens,
                                         reply.completion_tokens, batch=True),
        )

    async def close(self) -> None:
        if self.collector is not None:
            await self.collector.close()


def _unchanged(aggregate: Any) -> None:
    return None


def _unchanged_self(aggregate: Any) -> Any:
    return aggregate


def _adopt(custom_id: str, entry: dict[str, Any], at: str, batch: ParkedBatch) -> bool:
    return batch.adopt(custom_id, entry, at)


def _open_batches(index: ParkedBatches) -> dict[str, int]:
    return dict(index.open)


def _list(batch_id: str, requests: int, index: ParkedBatches) -> None:
    index.park(batch_id, requests)


def _unlist(batch_id: str, index: ParkedBatches) -> None:
    index.done(batch_id)


def _delivered(custom_ids: list[str], status: str, at: str, batch: ParkedBatch) -> bool:
    """Note the requests answered; close the batch once none is left. Whether closed."""
    batch.deliver(custom_ids, at)
    if not batch.undelivered():
        batch.close(status, at)
    return batch.closed
