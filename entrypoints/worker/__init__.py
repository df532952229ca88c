"""The Kafka worker: `gpt-send` in, the chat use case, `gpt-response` out.

Records stream in; those of different conversations are answered concurrently,
those of one conversation one after another in the order they were fetched.
At most MAX_IN_FLIGHT records are held: beyond that the worker pauses its
partitions (backpressure) and keeps polling, so the group does not evict it.
Per partition, only the offset below which every record is answered and its
response delivered is committed (at-least-once). A record fetched again after a
crash or a rebalance is answered from the event store, not by the model.

One record's way through the modules of this package:

- `consumer_loop`: `KafkaWorker` fetches it, holds it and reads the request;
  pauses fetching when full; rebalance callbacks and offset commits.
- `held_records`: what is held (stats, offsets) until it is finished or dropped.
- `request_accounting`: its span; once answered, its stats, metrics and log line.
- `conversation_lanes`: queued behind its conversation's records and answered
  (`persevere`: through store outages), unless its partition is taken away.
- `responder`: the response (or the dead letter) produced, with trace headers
  and delivery retries; the last delivery finishes the record. A Batch API
  request is finished without a response once it is parked in its batch.
- `batch_completions`: beside the records, the poll of the parked batches; the
  responses whose outcome this replica recorded, produced when a batch ends.
- `erasure_listener` and `retention_runs`: the privacy work beside the requests.
"""

from entrypoints.worker.consumer_loop import KafkaWorker, WorkerFailed
from entrypoints.worker.held_records import WorkerStats

__all__ = ["KafkaWorker", "WorkerFailed", "WorkerStats"]
