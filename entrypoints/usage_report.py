"""The usage report as operators read it: an aligned table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from adapters.usage_view import open_usage_view
from adapters.event_store import ChatRecords
from application.usage import (
    Grouping,
    UsageLine,
    UsageProjection,
    Window,
    catch_up,
    usage_report,
    user_hash,
)

Format = Literal["table", "json", "csv"]
FORMATS: tuple[Format, ...] = ("table", "json", "csv")

# (field in JSON and CSV, header in the table)
COLUMNS = (
    ("requests", "requests"),
    ("answered", "answered"),
    ("failed", "failed"),
    ("prompt_tokens", "prompt tok"),
    ("cached_tokens", "cached tok"),
    ("completion_tokens", "completion tok"),
    ("cost_usd", "cost USD"),
    ("unpriced", "unpriced"),
    ("vision_share", "vision %"),
    ("turns_per_conversation", "turns/conv"),
    ("messages_per_user", "msgs/user"),
)
TOTAL = "total"


def current_usage(
    records: ChatRecords,
    secret_key: str,
    window: Window,
    by: Grouping | None = None,
    fmt: Format = "table",
    user: str | None = None,
    model_label: Callable[[str], str] = lambda model: model,
    progress: Callable[[int, int], None] | None = None,
    budgets: list[Limit] | None = None,
) -> str:
    """The report, after catching the view up with the store: current even when no
    worker kept it; the table ends with what is left of today's budgets. Raises
    UsageViewUnavailable or the store's PersistenceError."""
    view = open_usage_view(records.env)  # beside the events, in the same database
    try:
        catch_up(records, UsageProjection(view, secret_key, model_label), progress=progress)
        lines = usage_report(view, window, by, user_hash(secret_key, user) if user else None)
    finally:
        view.close()
    report = render(lines, by, fmt, window)
    if fmt == "table" and budgets:
        report += "\n" + "\n".join(budget_lines(records, budgets))
    return report


@dataclass(frozen=True)
class Limit:
    """A daily limit to report: its name, TokenBudget scope, limit and unit."""

    name: str
    scope: str
    limit: int
    dollars: bool = False  # counted in millionths of a dollar


def budget_lines(records: ChatRecords, limits: list[Limit], day: str | None = None) -> list[str]:
    """Today's (UTC) spending against each limit: used (held included) and left."""
    day = day or datetime.now(UTC).date().isoformat()
    lines = [f"Budgets today ({day}, UTC):"]
    for limit in limits:
        budget = records.budget(limit.scope, day)
        used = budget.used + budget.reserved
        left = max(limit.limit - used, 0)
        if limit.dollars:
            lines.append(f"  {limit.name}: ${used / 1e6:,.4f} of ${limit.limit / 1e6:,.2f} "
                         f"spent or held, ${left / 1e6:,.4f} left")
        else:
            lines.append(f"  {limit.name}: {used:,} of {limit.limit:,} tokens used or held, "
                         f"{left:,} left")
    return lines


def usage_rows(lines: list[UsageLine], by: Grouping | None) -> list[dict[str, Any]]:
    """One object per line: its group under the name of --by ("total" for the total),
    then the figures; numbers as numbers, cost None when nothing was priced."""
    rows = []
    for line in lines:
        row: dict[str, Any] = {by: line.group if line.group is not None else TOTAL} if by else {}
        row.update(
            requests=line.requests,
            answered=line.answered,
            failed=line.failed,
            prompt_tokens=line.prompt_tokens,
            cached_tokens=line.cached_tokens,
            completion_tokens=line.completion_tokens,
            # Rounded below a millionth of a cent: a float sum's last digits are noise.
            cost_usd=None if line.cost is None else round(line.cost, 10),
            unpriced=line.unpriced,
            vision_share=round(line.vision_share, 1),
            turns_per_conversation=round(line.turns_per_conversation, 2),
            messages_per_user=round(line.messages_per_user, 2),
        )
        rows.append(row)
    return rows


def render(lines: list[UsageLine], by: Grouping | None, fmt: Format, window: Window) -> str:
    rows = usage_rows(lines, by)
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*([by] if by else []), *(f for f, _ in COLUMNS)],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return _table(rows, lines[-1], by, window)


def _table(rows: list[dict[str, Any]], total: UsageLine, by: Grouping | None,
           window: Window) -> str:
    headers = [*([by] if by else []), *(header for _, header in COLUMNS)]
    cells = [[_cell(name, row[name]) for name in row] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]
    numeric_from = 1 if by else 0  # the group column is text, the rest numbers

    def line(values: list[str]) -> str:
        return "  ".join(
            value.ljust(width) if i < numeric_from else value.rjust(width)
            for i, (value, width) in enumerate(zip(values, widths))
        ).rstrip()

    heading = f"Usage, {window.describe()}" + (f", by {by}" if by else "")
    out = [heading, line(headers)]
    if by and len(cells) > 1:
        out += [line(values) for values in cells[:-1]]
        out.append(line(["-" * width for width in widths]))
    out.append(line(cells[-1]))
    if total.unpriced:
        out.append(f"{total.unpriced} answered request(s) used a model without a price: "
                   "their cost is not in the cost column.")
    return "\n".join(out)


def _cell(name: str, value: Any) -> str:
    if name == "cost_usd":
        return "-" if value is None else f"{value:.8f}"
    if isinstance(value, float):
        return f"{value:.1f}" if name == "vision_share" else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
