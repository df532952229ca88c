"""The Conversation aggregate: one user's chat thread, every turn an event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.addresses import InvalidAddress, legacy_form
from domain.addresses import normalise_email

CONVERSATION_NAMESPACE = uuid5(NAMESPACE_URL, "chater-gpt/conversation")

# Tokens the chat format spends on each message besides its text (role, separators).
MESSAGE_OVERHEAD_TOKENS = 4

# Where a recorded reply came from: the model itself, the provider's Batch API, the
# response cache, or another request's identical call in flight at the same moment.
REPLY_SOURCES = ("model", "batch", "cache", "shared")


@dataclass(frozen=True)
class Shredded:
    """Content whose data key was destroyed, at the user's request ("erased") or by
    the retention policy ("expired"). A value of its own, never text: nothing a
    user writes can look like it."""

    reason: str

    def __str__(self) -> str:
        return f"[{self.reason}]"


ERASED = Shredded("erased")
EXPIRED = Shredded("expired")
# How versions before Shredded stored shredded content: as this very text.
_LEGACY_TEXT = {str(ERASED): ERASED, str(EXPIRED): EXPIRED}


def from_legacy(content: Any) -> Any:
    """Content as a version before Shredded stored it: its "[erased]" and
    "[expired]" texts were shredded content (only ever read from such a store)."""
    return _LEGACY_TEXT.get(content, content) if isinstance(content, str) else content


def readable(content: object) -> bool:
    """False for content that was shredded (or never there)."""
    return content is not None and not isinstance(content, Shredded)


def compared_or_legacy(user_email: str) -> str:
    """The address as it is compared: `domain.addresses.normalise_email` (validate
    with that one: this one never raises for text). An address that rule refuses
    (the contract turns such requests away) can only come from a Started event an
    earlier version stored, and replaying an event must never raise: it is read in
    the form that version gave it (`legacy_form`), and so is its data owner."""
    try:
        return normalise_email(user_email)
    except InvalidAddress:
        return legacy_form(user_email)


@dataclass(frozen=True)
class Turn:
    """One answered exchange: what the user said and what the model replied."""

    request_id: str
    user_message: str | Shredded
    image_count: int
    reply: str | Shredded
    model: str
    answered_at: str = ""  # ISO UTC; empty in turns recorded before it was kept

    @property
    def readable(self) -> bool:
        """False once its content was erased or expired: it is no context any more."""
        return readable(self.user_message) and readable(self.reply)


@dataclass(frozen=True)
class Answer:
    """How an answered request ended: the reply and what it cost (`cost` in US
    dollars, None when the model has no price)."""

    reply: str | Shredded
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    finish_reason: str
    answered_at: str
    processing_time: float
    source: str = "model"  # one of REPLY_SOURCES


@dataclass(frozen=True)
class Failure:
    """How a request that could not be answered ended, and why."""

    error_type: str
    error_message: str
    failed_at: str
    processing_time: float


Outcome = Answer | Failure


class Conversation(Aggregate):
    """A user's conversation (optionally one of several, named by a thread id).

    It remembers which requests it has seen and how each ended, so that a
    redelivered request is answered from the record instead of the model.
    """

    # Version 2 keeps outcomes as Answer and Failure values (dicts before);
    # version 3 the digests of the requests' content; version 4 when and by
    # which worker each pending request's model call went out.
    class_version = 4

    # Defaults for state restored from snapshots taken before compaction existed.
    summary: str | Shredded | None = None
    summarised_through: str | None = None
    summary_from: str = ""

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot's outcomes were the wire dictionaries, and shredded content was
        the text "[erased]" or "[expired]": typed values now."""
        state["outcomes"] = {
            request_id: _outcome_from_v1(outcome)
            for request_id, outcome in state.get("outcomes", {}).items()
        }
        state["turns"] = [
            replace(turn, user_message=from_legacy(turn.user_message), reply=from_legacy(turn.reply))
            for turn in state.get("turns", [])
        ]
        for asked in state.get("pending", {}).values():
            asked["message"] = from_legacy(asked.get("message"))
        for name in ("summary", "user_email"):
            if name in state:
                state[name] = from_legacy(state[name])

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """Requests recorded before digests were kept have none: not checked."""
        state.setdefault("digests", {})

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        """Pending requests did not say when their model call went out: not after
        the snapshot's last change, by a worker no longer known."""
        since = _iso(state.get("_modified_on"))
        for asked in state.get("pending", {}).values():
            asked.setdefault("call", [since, ""])

    @staticmethod
    def create_id(user_email: str, thread: str | None = None) -> UUID:
        return conversation_id(user_email, thread)

    @event("Started")
    def __init__(self, user_email: str, thread: str | None = None) -> None:
        # Shredded when replayed after the user's data key was destroyed.
        self.user_email: str | Shredded = (
            compared_or_legacy(user_email) if isinstance(user_email, str) else user_email
        )
        self.thread = thread
        self.turns: list[Turn] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, Outcome] = {}
        # The oldest turns, once compacted: a summary of them (and of any summary
        # before it), the last request it covers and when its oldest content was said.
        self.summary: str | Shredded | None = None
        self.summarised_through: str | None = None
        self.summary_from: str = ""
        # Request id -> the digest of what it asked (personal: derived from the
        # user's words), so that an id used again for other content is told apart
        # from a redelivery.
        self.digests: dict[str, str] = {}

    # Commands: each body is both the decision and the state change of its event.

    class UserMessageReceived(Aggregate.Event):
        """Version 2 added when it was received (ISO UTC) and by which worker (the
        id of one worker process): that worker calls the model for it next."""

        class_version = 2

        request_id: str
        message: str
        image_digests: list[str]
        model: str
        max_tokens: int
        temperature: float
        system_prompt: str | None
        caller_context: str | None
        history_turns: int
        request_digest: str | Shredded | None = None
        received_at: str = ""
        worker: str = ""

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # Received by a version that did not say when: the event's own time
            # (the moment it was recorded), by a worker that is no longer known.
            state["received_at"] = _iso(state.get("timestamp"))
            state["worker"] = ""

    @event(UserMessageReceived)
    def receive_message(
        self,
        request_id: str,
        message: str,
        image_digests: list[str],
        model: str,
        max_tokens: int,
        temperature: float,
        system_prompt: str | None,
        caller_context: str | None,
        history_turns: int,
        request_digest: str | Shredded | None = None,
        received_at: str = "",
        worker: str = "",
    ) -> None:
        """Record the user's message and exactly what will be sent along with it,
        and the digest of what the request asked (none before digests were kept);
        `worker` (received at `received_at`, ISO UTC) calls the model for it next."""
        self.check_not_seen(request_id)
        self.pending[request_id] = {
            "message": message, "image_count": len(image_digests),
            "call": [received_at, worker],
        }
        self._keep_digest(request_id, request_digest)

    @event("ModelCallTakenOver")
    def take_over_call(self, request_id: str, taken_at: str, worker: str) -> None:
        """Another worker calls the model for a pending request from `taken_at`
        (ISO UTC): the call of whoever received it can no longer land, or never
        went out."""
        self.check_pending(request_id)
        self.pending[request_id]["call"] = [taken_at, worker]

    @event("ModelCallSent")
    def send_call(self, request_id: str, sent_at: str, worker: str) -> None:
        """The worker calling the model for a pending request sends its call only at
        `sent_at` (ISO UTC), well after it received the request (it waited for its
        turn: the rate limit, the concurrency limit): the call may land until its
        time from then is up."""
        self.check_pending(request_id)
        self.pending[request_id]["call"] = [sent_at, worker]

    @event("ModelCallAbandoned")
    def abandon_call(self, request_id: str, abandoned_at: str) -> None:
        """The worker calling the model for a pending request gave up before a reply
        came (its partition moved, it stopped): no call of it can land any more,
        so whoever answers the request next calls the model at once."""
        self.check_pending(request_id)
        self.pending[request_id]["call"] = None

    class ReplyRecorded(Aggregate.Event):
        """Version 2 added what a reply cost: cached prompt tokens and dollars;
        version 3 where it came from (REPLY_SOURCES)."""

        class_version = 3

        request_id: str
        reply: str
        model: str
        prompt_tokens: int
        completion_tokens: int
        finish_reason: str
        answered_at: str
        processing_time: float
        cached_tokens: int
        cost: float | None
        source: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # Replies recorded before prices were kept: their cost was never known.
            state["cached_tokens"] = 0
            state["cost"] = None

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["source"] = "model"  # the only source there was

    @event(ReplyRecorded)
    def record_reply(
        self,
        request_id: str,
        reply: str | Shredded,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        answered_at: str,
        processing_time: float,
        cached_tokens: int,
        cost: float | None,
        source: str = "model",
    ) -> None:
        """Record the model's answer to a pending request and what it cost
        (`cost` in US dollars, None when the model has no price; nothing for a
        reply from the cache or shared with an identical request)."""
        self.check_pending(request_id)
        asked = self.pending.pop(request_id)
        self.turns.append(
            Turn(request_id, asked["message"], asked["image_count"], reply, model, answered_at)
        )
        self.outcomes[request_id] = Answer(
            reply, model, prompt_tokens, completion_tokens, cost, finish_reason,
            answered_at, processing_time, source,
        )

    @event("BatchSubmitted")
    def submit_to_batch(
        self, request_id: str, batch_id: str, custom_id: str, submitted_at: str
    ) -> None:
        """A pending request was sent in one of the provider's batches, as `custom_id`:
        whoever answers it next waits for that batch instead of paying again."""
        self.check_pending(request_id)
        self.pending[request_id]["batch"] = [batch_id, custom_id]

    @event("ContextCompacted")
    def compact(
        self,
        summary: str,
        through_request_id: str,
        content_from: str,
        turns_covered: int,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float | None,
        compacted_at: str,
    ) -> None:
        """The oldest turns (up to and including `through_request_id`, the first
        answered at `content_from`), with any earlier summary, were summarised by
        `model` into one note, which stands in for them as context from now on."""
        self.summary = summary
        self.summarised_through = through_request_id
        self.summary_from = content_from

    @event("RequestFailed")
    def record_failure(
        self,
        request_id: str,
        error_type: str,
        error_message: str,
        failed_at: str,
        processing_time: float,
        request_digest: str | Shredded | None = None,
    ) -> None:
        """Record that a request could not be answered, and why; with the digest of
        what it asked when it was refused without being received."""
        self.check_not_concluded(request_id)
        self.pending.pop(request_id, None)
        self.outcomes[request_id] = Failure(error_type, error_message, failed_at, processing_time)
        self._keep_digest(request_id, request_digest)

    @event("UserErased")
    def erase(self, requested_by: str, erased_at: str) -> None:
        """The user asked for their data to be erased (their data keys are destroyed
        next): the history is forgotten, so later requests start afresh. Requests
        in flight stay pending, so that their replies can still be recorded."""
        self.turns = []
        self.summary = None
        self.digests = {}  # derived from the user's words
        for request_id, outcome in self.outcomes.items():
            if isinstance(outcome, Answer):
                self.outcomes[request_id] = replace(outcome, reply=ERASED)
        for asked in self.pending.values():
            asked["message"] = ERASED

    @event("ContentExpired")
    def expire(self, before_day: str, expired_at: str) -> None:
        """The retention policy destroyed the data keys of the days before
        `before_day`: those turns are no context any more, and their replies are
        no longer kept for redelivered requests either, nor the digests of what
        those requests asked."""
        self.turns = [turn for turn in self.turns if turn.answered_at[:10] >= before_day]
        if self.summary_from[:10] < before_day:
            # Its turns still within retention are context again, unsummarised.
            self.summary = None
            self.summarised_through = None
        for request_id, outcome in self.outcomes.items():
            ended = outcome.answered_at if isinstance(outcome, Answer) else outcome.failed_at
            if ended[:10] >= before_day:
                continue
            self.digests.pop(request_id, None)
            if isinstance(outcome, Answer):
                self.outcomes[request_id] = replace(outcome, reply=EXPIRED)

    # Bounds -------------------------------------------------------------------

    def keep_within(self, turns: int, outcomes: int) -> None:
        """Forget what answering and deduplication no longer need, so that the state
        does not grow with the conversation: turns a readable summary covers, turns
        beyond the newest `turns`, and outcomes (with the digests of what they asked)
        beyond the newest `outcomes`. Not an event: the events keep all of it, and
        the audit replays them in full. A request whose outcome was forgotten is
        answered anew if it is ever delivered again."""
        kept = self.turns
        if isinstance(self.summary, str) and self.summarised_through is not None:
            through = next((i for i, turn in enumerate(kept)
                            if turn.request_id == self.summarised_through), None)
            if through is not None:
                kept = kept[through + 1:]
        if len(kept) > turns:
            kept = kept[len(kept) - turns:] if turns > 0 else []
        if kept is not self.turns:
            self.turns = list(kept)
        excess = len(self.outcomes) - max(outcomes, 0)
        if excess > 0:
            for request_id in list(islice(self.outcomes, excess)):
                del self.outcomes[request_id]
        if len(self.digests) > len(self.outcomes) + len(self.pending):
            self.digests = {
                request_id: digest for request_id, digest in self.digests.items()
                if request_id in self.outcomes or request_id in self.pending
            }

    # Queries ------------------------------------------------------------------

    def outcome(self, request_id: str) -> Outcome | None:
        """How a request ended, or None while it has not ended."""
        return self.outcomes.get(request_id)

    def is_pending(self, request_id: str) -> bool:
        return request_id in self.pending

    def check_same_request(self, request_id: str, digest: str) -> None:
        """Raise RequestIdReused when the request id was recorded asking something
        else. Unknown (recorded before digests were kept, erased, expired, or of
        another digest form) is not checked: a redelivery is the likelier."""
        recorded = self.digests.get(request_id)
        if recorded is None or _digest_form(recorded) != _digest_form(digest):
            return
        if recorded != digest:
            raise RequestIdReused(request_id)

    def pending_message(self, request_id: str) -> str | Shredded:
        """What a pending request asked (ERASED if its user was erased meanwhile)."""
        message: str | Shredded = self.pending[request_id]["message"]
        return message

    def pending_call(self, request_id: str) -> tuple[str, str] | None:
        """(since when, ISO UTC, by which worker) the model may have been called for
        a pending request: the worker that received it or took its call over ("":
        one no longer known), whose call may land until that call's time is up.
        None when no call can be out (abandoned, or received without saying when)."""
        call = self.pending[request_id].get("call")
        if not call or not call[0]:
            return None
        return call[0], call[1]

    def pending_batch(self, request_id: str) -> tuple[str, str] | None:
        """(batch id, custom id) of the provider's batch a pending request was sent
        in, if it was."""
        sent = self.pending[request_id].get("batch")
        return (sent[0], sent[1]) if sent else None

    def context_summary(self, not_before: str = "") -> str | None:
        """The summary of the compacted turns, when there is a readable one whose
        oldest content was said at or after `not_before` (ISO UTC; older has expired)."""
        if not isinstance(self.summary, str):
            return None
        if not_before and self.summary_from < not_before:
            return None
        return self.summary

    def unsummarised_turns(self, not_before: str = "") -> list[Turn]:
        """The readable turns after the summary's, oldest first, answered at or
        after `not_before` (ISO UTC; older content has expired)."""
        turns = self.turns
        # Without a usable summary, the turns it covered are context again.
        if self.summarised_through is not None and self.context_summary(not_before):
            through = next(
                (i for i, turn in enumerate(turns) if turn.request_id == self.summarised_through),
                None,
            )
            if through is not None:
                turns = turns[through + 1:]
        return [
            turn for turn in turns
            if turn.readable and (not not_before or turn.answered_at >= not_before)
        ]

    def recent_turns(
        self,
        max_turns: int,
        max_tokens: int,
        count_tokens: Callable[[str], int],
        not_before: str = "",
    ) -> list[Turn]:
        """The latest readable turns after the summary's, oldest first, that fit
        both bounds and were answered at or after `not_before` (ISO UTC; older
        content has expired).

        Newer turns matter more, so selection walks back from the latest and stops
        at the first turn that no longer fits.
        """
        selected: list[Turn] = []
        room = max_tokens
        turns = self.unsummarised_turns(not_before)
        for turn in reversed(turns[-max_turns:] if max_turns > 0 else []):
            cost = turn_tokens(turn, count_tokens)
            if cost > room:
                break
            selected.append(turn)
            room -= cost
        selected.reverse()
        return selected

    # Invariants ---------------------------------------------------------------

    def check_not_seen(self, request_id: str) -> None:
        if request_id in self.pending or request_id in self.outcomes:
            raise RequestAlreadyReceived(request_id)

    def check_pending(self, request_id: str) -> None:
        if request_id not in self.pending:
            raise RequestNotPending(request_id)

    def check_not_concluded(self, request_id: str) -> None:
        if request_id in self.outcomes:
            raise RequestAlreadyConcluded(request_id)

    def _keep_digest(self, request_id: str, digest: str | Shredded | None) -> None:
        if isinstance(digest, str):  # not when shredded or never recorded
            self.digests[request_id] = digest


def _outcome_from_v1(outcome: dict[str, Any]) -> Outcome:
    if "error" in outcome:
        return Failure(outcome["error"]["type"], outcome["error"]["message"],
                       outcome["timestamp"], outcome["processing_time"])
    usage = outcome["usage"]
    source = "batch" if outcome.get("batch") else "cache" if outcome.get("cached") else "model"
    return Answer(from_legacy(outcome["response"]), outcome["model"], usage["prompt_tokens"],
                  usage["completion_tokens"], outcome.get("cost_usd"), outcome["finish_reason"],
                  outcome["timestamp"], outcome["processing_time"], source)


def _iso(moment: Any) -> str:
    """A stored moment (a datetime, or already its text) as ISO text; "" if none."""
    if moment is None:
        return ""
    return moment if isinstance(moment, str) else moment.isoformat()


def _digest_form(digest: str) -> str:
    """The form a digest names before its first colon ("" when it names none)."""
    form, colon, _ = digest.partition(":")
    return form if colon else ""


def data_owner(user_email: str) -> str:
    """Who owns the data keys of a user's conversations: stable across SECRET_KEY
    rotations, and no more revealing than the conversation ids already are."""
    return str(uuid5(CONVERSATION_NAMESPACE, f"owner\n{compared_or_legacy(user_email)}"))


def conversation_id(user_email: str, thread: str | None = None) -> UUID:
    """Derive the id so that any worker finds a conversation without a lookup."""
    return uuid5(CONVERSATION_NAMESPACE, f"{compared_or_legacy(user_email)}\n{thread or ''}")


def turn_tokens(turn: Turn, count_tokens: Callable[[str], int]) -> int:
    """What a (readable) turn costs as context."""
    return (
        count_tokens(str(turn.user_message))
        + count_tokens(str(turn.reply))
        + 2 * MESSAGE_OVERHEAD_TOKENS
    )


class ConversationError(Exception):
    """Base class of the conversation's domain errors."""


class RequestAlreadyReceived(ConversationError):
    """The request id was already received by this conversation."""


class RequestNotPending(ConversationError):
    """A reply was recorded for a request that is not waiting for one."""


class RequestAlreadyConcluded(ConversationError):
    """The request already has an outcome."""


class RequestIdReused(ConversationError):
    """The request id was recorded for a request that asked something else."""
