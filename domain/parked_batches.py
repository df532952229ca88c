"""Requests parked in the provider's batches, so that any replica finds them again.

A request answered through the Batch API is not held by the worker that took it:
once its batch exists and the conversation recorded BatchSubmitted, its record is
finished. What is needed to answer it later is kept here: one ParkedBatch per
provider batch (its requests by custom id: which conversation and request, the
budget hold to settle, the deadline) and one ParkedBatches index of the batches
still open, which every replica's poller reads. Nothing of the user is in them:
conversation ids are derived ids, custom ids are random.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

PARKED_NAMESPACE = uuid5(NAMESPACE_URL, "chater-gpt/parked-batches")


class ParkedBatch(Aggregate):
    """One provider batch and the requests parked in it, until each has been answered.

    `requests` maps a custom id to {"conversation_id", "request_id", "hold" (the
    budget reservation's id), "day" (of the budget it is held in), "tokens" (held),
    "deadline" (epoch seconds, or None)}.
    """

    @staticmethod
    def create_id(batch_id: str, **_: Any) -> UUID:
        return parked_batch_id(batch_id)

    @event("BatchOpened")
    def __init__(
        self, batch_id: str, model: str, requests: dict[str, dict[str, Any]], opened_at: str
    ) -> None:
        self.batch_id = batch_id
        self.model = model
        self.requests = requests
        self.opened_at = opened_at
        self.delivered: list[str] = []  # custom ids whose response went out
        self.closed = False

    @event("AnswersDelivered")
    def _deliver(self, custom_ids: list[str], at: str) -> None:
        self.delivered.extend(custom_ids)

    def deliver(self, custom_ids: list[str], at: str) -> None:
        """The responses to these requests were produced (or are not this batch's to
        give: the request was answered otherwise)."""
        new = [c for c in dict.fromkeys(custom_ids) if c in self.requests and c not in self.delivered]
        if new:
            self._deliver(custom_ids=new, at=at)

    @event("RequestAdopted")
    def _adopt(self, custom_id: str, request: dict[str, Any], at: str) -> None:
        self.requests[custom_id] = request
        self.closed = False

    def adopt(self, custom_id: str, request: dict[str, Any], at: str) -> bool:
        """A request found parked in this batch by its conversation alone (sent by a
        version that kept no ParkedBatch): polled from now on. Whether it was new."""
        if custom_id in self.requests:
            return False
        self._adopt(custom_id=custom_id, request=request, at=at)
        return True

    @event("BatchClosed")
    def _close(self, status: str, at: str) -> None:
        self.closed = True

    def close(self, status: str, at: str) -> None:
        """Every request of the batch was answered: nobody polls it any more."""
        if not self.closed:
            self._close(status=status, at=at)

    def undelivered(self) -> dict[str, dict[str, Any]]:
        return {c: r for c, r in self.requests.items() if c not in set(self.delivered)}


class ParkedBatches(Aggregate):
    """The index of the batches with requests not yet answered (one for the service)."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return PARKED_INDEX_ID

    @event("Started")
    def __init__(self) -> None:
        self.open: dict[str, int] = {}  # batch id -> requests parked in it

    @event("BatchParked")
    def _list(self, batch_id: str, requests: int) -> None:
        self.open[batch_id] = requests

    def park(self, batch_id: str, requests: int) -> None:
        if batch_id not in self.open:
            self._list(batch_id=batch_id, requests=requests)

    @event("BatchDone")
    def _unlist(self, batch_id: str) -> None:
        self.open.pop(batch_id, None)

    def done(self, batch_id: str) -> None:
        if batch_id in self.open:
            self._unlist(batch_id=batch_id)

    @property
    def parked(self) -> int:
        """Requests in the open batches (some may have been answered already)."""
        return sum(self.open.values())


PARKED_INDEX_ID = uuid5(PARKED_NAMESPACE, "index")


def parked_batch_id(batch_id: str) -> UUID:
    return uuid5(PARKED_NAMESPACE, f"batch\n{batch_id}")
