"""The usage view kept current while a worker runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.event_store import ChatRecords


USAGE_CATCH_UP_INTERVAL = 5.0  # seconds between the worker's catch-ups of the usage view


class UsageCatchUp:
    """Keeps the usage view current while the worker runs: a catch-up every few
    seconds in a thread of its own, and a last one at stop. A failure (the store
    is down) is logged and tried again later; it never stops the worker."""

    def __init__(
        self, records: ChatRecords, secret_key: str, model_label: Callable[[str], str]
    ) -> None:
        self.model_label = model_label
        self.records = records
        self.secret_key = secret_key
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="usage-catch-up", daemon=True)
        self.log = logging.getLogger("chater-gpt.usage")

    def start(self) -> None:
        from application.usage import UsageProjection

        # The events this worker saves are taken as saved, not read back.
        self.records.keep_saved_events(UsageProjection.topics)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Catch up once more (what the worker recorded last) and wait for it."""
        self.stopping.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        from adapters.usage_view import UsageViewUnavailable, open_usage_view
        from application.usage import UsageProjection, catch_up

        projection: UsageProjection | None = None
        try:
            while True:
                last = self.stopping.is_set()
                try:
                    if projection is None:
                        projection = UsageProjection(
                            open_usage_view(self.records.env), self.secret_key, self.model_label
                        )
                    # A stopping worker's last catch-up is not cut short between batches.
                    catch_up(self.records, projection, stop=None if last else self.stopping)
                except UsageViewUnavailable as error:
                    self.log.info("usage view not kept: %s", error)
                    self.records.keep_saved_events(())
                    return
                except Exception as error:  # the store is down, say: next time
                    self.log.warning("usage view catch-up failed (%s); retrying", error)
                if last:
                    return
                self.stopping.wait(USAGE_CATCH_UP_INTERVAL)
        finally:
            if projection is not None:
                projection.view.close()
