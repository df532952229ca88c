"""Usage: a projection of the conversations' events into one row per request, and
the report operators read from it (requests, tokens, cost; by user, model, day or month).

The view is kept from the event store's notification log with eventsourcing's
projection machinery: each batch of notifications is applied in one transaction
together with its position (a `Tracking`), so the view survives restarts, catches
up from where it stopped, and two catch-ups racing never count anything twice.
It holds no message text and no e-mail address: users are HMACs of their address.
"""

from __future__ import annotations

import hmac
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from eventsourcing.application import Application
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from domain.conversation import Conversation, compared_or_legacy, readable

Grouping = Literal["user", "model", "day", "month"]
GROUPINGS: tuple[Grouping, ...] = ("user", "model", "day", "month")
CATCH_UP_BATCH = 500  # notifications per transaction


def user_hash(secret_key: str, email: str) -> str:
    """The same user gives the same hash, which says nothing without SECRET_KEY."""
    return hmac.new(secret_key.encode(), compared_or_legacy(email).encode(), "sha256").hexdigest()[:16]


def sortable_time(at: datetime) -> str:
    """UTC time as fixed-width text: it sorts as time, and its first 10 characters are the day."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# The window of a report ----------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Requests received from `since` (inclusive) until `until` (exclusive); None: open."""

    since: datetime | None = None
    until: datetime | None = None

    def describe(self) -> str:
        if self.since is None and self.until is None:
            return "all time"
        parts = [f"from {_shown(self.since)}"] if self.since else []
        if self.until and self.until.time() == time():  # whole days: say the last one
            parts.append(f"through {self.until - timedelta(days=1):%Y-%m-%d}")
        elif self.until:
            parts.append(f"until {_shown(self.until)} (excluded)")
        return " ".join(parts) + " UTC"


def _shown(at: datetime) -> str:
    if at.time() == time():
        return f"{at:%Y-%m-%d}"
    return f"{at:%Y-%m-%d %H:%M:%S.%f}".rstrip("0").rstrip(".")


def parse_window(since: str | None, until: str | None) -> Window:
    """--since/--until: a date YYYY-MM-DD means whole UTC days, both inclusive; an ISO
    datetime is exact (since inclusive, until exclusive; UTC unless it says otherwise)."""
    window = Window(
        _parse_moment("--since", since, whole_day_after=False),
        _parse_moment("--until", until, whole_day_after=True),
    )
    if window.since and window.until and window.since >= window.until:
        raise ValueError("--since must be before --until")
    return window


def _parse_moment(option: str, text: str | None, whole_day_after: bool) -> datetime | None:
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time(), UTC)
        return start + timedelta(days=1) if whole_day_after else start
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{option}: {text!r} is neither a date (YYYY-MM-DD) nor an ISO datetime "
            "(YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# What the projection writes ------------------------------------------------------


@dataclass(frozen=True)
class ConversationStarted:
    conversation_id: str
    user_hash: str


@dataclass(frozen=True)
class RequestReceived:
    conversation_id: str
    request_id: str
    received_at: str  # sortable_time
    model: str
    kind: Literal["text", "vision"]


@dataclass(frozen=True)
class RequestAnswered:
    conversation_id: str
    request_id: str
    model: str  # the model that answered (a fallback, maybe)
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: float | None  # US dollars; None: the model has no price


@dataclass(frozen=True)
class RequestFailure:
    conversation_id: str
    request_id: str
    error_type: str


@dataclass
class UsageChanges:
    """What a batch of events changes in the view, applied in this order."""

    conversations: list[ConversationStarted] = field(default_factory=list)
    received: list[RequestReceived] = field(default_factory=list)
    answered: list[RequestAnswered] = field(default_factory=list)
    failed: list[RequestFailure] = field(default_factory=list)
    # Conversations whose user was erased: their rows keep no user any more.
    erased: list[str] = field(default_factory=list)


# What the report reads -----------------------------------------------------------


@dataclass(frozen=True)
class UsageLine:
    """The sums of one group of requests (a user hash, model, day or month; None: all of them)."""

    group: str | None
    requests: int
    answered: int
    failed: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: float | None  # over the priced replies; None when none was priced
    unpriced: int  # replies by a model without a price: not in `cost`
    vision: int  # requests with images
    conversations: int
    users: int

    @property
    def vision_share(self) -> float:
        """Percent of the requests that carried images."""
        return 100 * self.vision / self.requests if self.requests else 0.0

    @property
    def turns_per_conversation(self) -> float:
        """Answered turns per conversation that had requests in the group."""
        return self.answered / self.conversations if self.conversations else 0.0

    @property
    def messages_per_user(self) -> float:
        return self.requests / self.users if self.users else 0.0


class UsageView(TrackingRecorder):
    """The materialised view of usage (a port): one row per request, in the event
    store's database, with the position in the notification log it reflects."""

    @abstractmethod
    def record(self, changes: UsageChanges, tracking: Tracking) -> None:
        """Apply the changes and the position in one transaction. Raises
        IntegrityError (and changes nothing) when the view is already at or past
        the position: another catch-up was first. Applying changes again is harmless."""

    @abstractmethod
    def summarise(
        self, window: Window, by: Grouping | None = None, user: str | None = None
    ) -> list[UsageLine]:
        """One line per group in order, or one line for all requests when `by` is None;
        only requests received in the window, and only one user's (hash) if given."""

    @abstractmethod
    def close(self) -> None:
        """Close the view's connections."""


class UsageProjection(Projection[UsageView]):
    """Keeps the usage view from the Conversation events; budgets are skipped."""

    name = "usage"
    topics = tuple(
        get_topic(event_class)
        for event_class in (
            Conversation.Started,
            Conversation.UserMessageReceived,
            Conversation.ReplyRecorded,
            Conversation.RequestFailed,
            Conversation.UserErased,
            Conversation.ContextCompacted,
        )
    )

    def __init__(
        self, view: UsageView, secret_key: str,
        model_label: Callable[[str], str] = lambda model: model,
    ) -> None:
        super().__init__(view)
        self._secret_key = secret_key
        self._model = model_label  # a name the service does not know is kept as "other"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Apply one event and its position in one transaction (the library's way)."""
        self.process_events([domain_event], tracking)

    def process_events(self, domain_events: Sequence[Any], tracking: Tracking) -> None:
        """Apply events in log order and the position of the last in one transaction."""
        changes = UsageChanges()
        for domain_event in domain_events:
            self.collect(domain_event, changes)
        self.view.record(changes, tracking)

    @singledispatchmethod
    def collect(self, domain_event: Any, changes: UsageChanges) -> None:
        """Events that say nothing about usage change nothing."""

    @collect.register(Conversation.Started)
    def _started(self, domain_event: Any, changes: UsageChanges) -> None:
        email = domain_event.user_email
        # Read after the user's erasure, the address is gone: the rows are nobody's.
        owner = user_hash(self._secret_key, email) if readable(email) else "erased"
        changes.conversations.append(ConversationStarted(str(domain_event.originator_id), owner))

    @collect.register(Conversation.UserMessageReceived)
    def _received(self, domain_event: Any, changes: UsageChanges) -> None:
        changes.received.append(RequestReceived(
            conversation_id=str(domain_event.originator_id),
            request_id=domain_event.request_id,
            received_at=sortable_time(domain_event.timestamp),
            model=self._model(domain_event.model),
            kind="vision" if domain_event.image_digests else "text",
        ))

    @collect.register(Conversation.ReplyRecorded)
    def _answered(self, domain_event: Any, changes: UsageChanges) -> None:
        changes.answered.append(RequestAnswered(
            conversation_id=str(domain_event.originator_id),
            request_id=domain_event.request_id,
            model=self._model(domain_event.model),
            prompt_tokens=domain_event.prompt_tokens,
            cached_tokens=domain_event.cached_tokens,
            completion_tokens=domain_event.completion_tokens,
            cost=domain_event.cost,
        ))

    @collect.register(Conversation.ContextCompacted)
    def _compacted(self, domain_event: Any, changes: UsageChanges) -> None:
        # A summary is spending of its own: a row of kind "summary", which counts
        # in tokens and cost but not as a request.
        request_id = f"summary:{domain_event.through_request_id}"
        cid = str(domain_event.originator_id)
        model = self._model(domain_event.model)
        changes.received.append(RequestReceived(
            conversation_id=cid, request_id=request_id,
            received_at=sortable_time(domain_event.timestamp), model=model, kind="summary",
        ))
        changes.answered.append(RequestAnswered(
            conversation_id=cid, request_id=request_id, model=model,
            prompt_tokens=domain_event.prompt_tokens, cached_tokens=0,
            completion_tokens=domain_event.completion_tokens, cost=domain_event.cost,
        ))

    @collect.register(Conversation.UserErased)
    def _erased(self, domain_event: Any, changes: UsageChanges) -> None:
        changes.erased.append(str(domain_event.originator_id))

    @collect.register(Conversation.RequestFailed)
    def _failed(self, domain_event: Any, changes: UsageChanges) -> None:
        changes.failed.append(RequestFailure(
            str(domain_event.originator_id), domain_event.request_id, domain_event.error_type
        ))


def catch_up(
    app: Application[Any],
    projection: UsageProjection,
    batch_size: int = CATCH_UP_BATCH,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Apply the notifications the view has not seen, one transaction per batch;
    returns how many were applied (by this call). `progress(done, total)` after each
    batch: notifications gone through, of those there were when it began.

    Several catch-ups may run at once (worker replicas, the usage command): a batch
    whose position another recorded first is rolled back, and the position read again.
    """
    view = projection.view
    applied = 0
    position = view.max_tracking_id(app.name)
    began, last = position or 0, (app.recorder.max_notification_id() or 0) if progress else 0
    # What this process saved itself is taken as saved (ChatRecords.saved_event).
    decode = getattr(app, "saved_event", app.mapper.to_domain_event)
    while stop is None or not stop.is_set():
        notifications = app.recorder.select_notifications(
            start=position, limit=batch_size, topics=projection.topics, inclusive_of_start=False
        )
        if not notifications:
            break
        events = [decode(notification) for notification in notifications]
        tracking = Tracking(app.name, notifications[-1].id)
        try:
            projection.process_events(events, tracking)
        except IntegrityError:
            moved = view.max_tracking_id(app.name)
            if moved == position:
                raise  # not a race: something else is wrong
            position = moved
            continue
        applied += len(notifications)
        position = tracking.notification_id
        if progress is not None:
            progress(min(position, last) - began, max(last - began, 0))
        if len(notifications) < batch_size:
            break
    if progress is not None and applied:
        # Caught up: the notifications of other topics after the last one applied included.
        progress(max(last - began, 0), max(last - began, 0))
    forget = getattr(app, "forget_saved_through", None)
    if forget is not None and position is not None:
        forget(position)
    return applied


def usage_report(
    view: UsageView, window: Window, by: Grouping | None = None, user: str | None = None
) -> list[UsageLine]:
    """The report's lines: one per group when grouped, then the total (group None)."""
    groups = view.summarise(window, by, user) if by else []
    return [*groups, *view.summarise(window, None, user)]
