"""Model names as telemetry shows them. A request may name any model, and what it
names reaches labels, spans and logs: a name the service does not know (neither
configured nor in the price table) is shown as "other", so a caller can put neither
personal data nor unbounded label values into the operators' tools."""

from __future__ import annotations

from collections.abc import Iterable

from domain.pricing import PriceTable

OTHER = "other"
OFFLINE_PREFIX = "offline:"


class ModelNames:
    def __init__(self, configured: Iterable[str | None], prices: PriceTable) -> None:
        self.configured = {name for name in configured if name}
        self.prices = prices

    def label(self, model: str) -> str:
        known = model.removeprefix(OFFLINE_PREFIX) in self.configured or self.prices.names(model)
        return model if known else OTHER
