"""Retention runs: content older than RETENTION_DAYS expires while the worker runs."""

from __future__ import annotations

import asyncio
import logging
import time

from application.privacy import Privacy
from entrypoints.settings import Settings

log = logging.getLogger(__name__)


class RetentionRuns:
    """Every RETENTION_INTERVAL (and at start), destroy the data keys of content
    older than RETENTION_DAYS; never two runs at once. A run that fails (the store
    is down, say) is left to the next one."""

    def __init__(self, privacy: Privacy, settings: Settings) -> None:
        self.privacy = privacy
        self.settings = settings
        self._running: asyncio.Task[None] | None = None
        self._last_start = float("-inf")

    def start_if_due(self) -> None:
        if self._running is not None and not self._running.done():
            return
        if time.monotonic() - self._last_start < self.settings.RETENTION_INTERVAL:
            return
        self._last_start = time.monotonic()
        self._running = asyncio.create_task(self._run())

    async def finish(self) -> None:
        """Wait for the run under way, if any (at shutdown)."""
        if self._running is not None:
            await asyncio.wait({self._running})

    async def _run(self) -> None:
        try:
            await self.privacy.expire_content(self.settings.RETENTION_DAYS)
        except Exception as error:  # the store is down, say: the next run does it
            log.warning("retention run failed (%s); trying again in %.0fs",
                        type(error).__name__, self.settings.RETENTION_INTERVAL)
