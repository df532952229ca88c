import asyncio
import random

import pytest

from adapters.aggregate_store import StoreOfRecords
from adapters.event_store import ChatRecords
from application.budget_ledger import BudgetLedger
from domain.token_budget import SERVICE_SCOPE, BudgetExceeded
from tests.unit.fakes import FixedClock


def budgets(records: ChatRecords):
    """The budgets of the store as one worker sees them (a cache of its own)."""
    return StoreOfRecords(records).budgets


def ledger(records: ChatRecords, clock: FixedClock, limit: int, chunk: int = 1000,
           lease_seconds: float = 10.0) -> BudgetLedger:
    return BudgetLedger(budgets(records), clock, limit, chunk_tokens=chunk,
                        lease_seconds=lease_seconds)


def stored(records: ChatRecords, day: str = "2026-11-25"):
    return records.budget(SERVICE_SCOPE, day)


@pytest.fixture
def records() -> ChatRecords:
    return ChatRecords(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


async def test_requests_are_held_in_a_lease_that_settles_with_real_usage(records):
    clock = FixedClock()
    book = ledger(records, clock, limit=100_000)
    for n in range(10):
        await book.reserve(f"r{n}", 300)
        book.settle(f"r{n}", 20)
    assert book.leases_opened == 1  # ten requests, one write of the budget
    assert stored(records).reserved == 1000
    await book.close()
    assert (stored(records).used, stored(records).reserved) == (200, 0)


async def test_workers_racing_for_one_budget_never_exceed_the_limit(records):
    clock = FixedClock()
    limit = 5_000
    workers = [ledger(records, clock, limit, chunk=700, lease_seconds=0.05) for _ in range(3)]
    spent = refused = 0

    async def housekeeping() -> None:  # what each worker's loop does between fetches
        while True:
            await asyncio.sleep(0.01)
            for book in workers:
                await book.housekeeping()

    async def request(book: BudgetLedger, n: int) -> None:
        nonlocal spent, refused
        try:
            await book.reserve(f"r{n}", 150)
        except BudgetExceeded:
            refused += 1
            return
        await asyncio.sleep(random.uniform(0, 0.005))
        used = random.randint(50, 150)
        spent += used
        book.settle(f"r{n}", used)

    keeper = asyncio.create_task(housekeeping())
    await asyncio.gather(*(request(workers[n % 3], n) for n in range(200)))
    keeper.cancel()
    for book in workers:
        await book.close()
    budget = stored(records)
    assert budget.reserved == 0
    assert budget.used == spent <= limit
    assert refused > 0 and spent > limit - 150 * 3 - 700  # it stopped near the limit, not early


async def test_a_new_day_gets_a_new_budget(records):
    clock = FixedClock()
    book = ledger(records, clock, limit=1000, chunk=1000)
    await book.reserve("r1", 500)
    book.settle("r1", 500)
    clock.advance(days=1)
    await book.reserve("r2", 500)
    book.settle("r2", 400)
    await book.close()
    assert stored(records, "2026-11-25").used == 500
    assert stored(records, "2026-11-26").used == 400


async def test_a_request_larger_than_what_is_left_is_refused(records):
    book = ledger(records, FixedClock(), limit=1000)
    await book.reserve("r1", 900)
    book.settle("r1", 900)
    with pytest.raises(BudgetExceeded):
        await book.reserve("r2", 200)
    await book.reserve("r3", 100)


async def test_an_idle_worker_gives_its_lease_back_when_it_expires(records):
    clock = FixedClock()
    idle = ledger(records, clock, limit=1000, chunk=1000, lease_seconds=0.05)
    busy = ledger(records, clock, limit=1000, chunk=1000)
    await idle.reserve("r1", 100)
    idle.settle("r1", 100)
    assert stored(records).reserved == 500  # half of what was left
    waiting = asyncio.create_task(busy.reserve("r2", 600))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # the idle worker's lease is in the way
    await idle.housekeeping()
    await asyncio.wait_for(waiting, 5)
    assert stored(records).used == 100


async def test_room_held_by_a_stopped_worker_ends_in_budget_exceeded_not_a_stall(records):
    clock = FixedClock()
    dead = ledger(records, clock, limit=1000, chunk=1000)
    await dead.reserve("r1", 100)  # leases 500 and dies without settling
    waiting = BudgetLedger(budgets(records), clock, 1000, chunk_tokens=1000,
                           max_wait=0.2)
    with pytest.raises(BudgetExceeded, match="held for"):
        await waiting.reserve("r2", 600)


async def test_a_store_outage_while_settling_fails_nobody_and_is_written_later(records):
    clock = FixedClock()
    failures = [RuntimeError("store down")]

    stores = StoreOfRecords(records)
    save = stores.budgets.writer.save

    async def flaky_save(budget, **options):
        if failures and budget.reservations == {}:  # the settling write
            raise failures.pop()
        await save(budget, **options)

    stores.budgets.writer.save = flaky_save
    book = BudgetLedger(stores.budgets, clock, 10_000, chunk_tokens=1000)
    await book.reserve("r1", 100)
    book.settle("r1", 40)
    await book.close()  # the settle fails: kept for later
    assert stored(records).reserved == 1000
    await book.flush()
    assert (stored(records).used, stored(records).reserved) == (40, 0)


async def test_a_dead_workers_lease_counts_as_spent_once_it_expires_and_waiters_get_a_clear_no(records):
    clock = FixedClock()
    dead = ledger(records, clock, limit=1000, chunk=1000)
    await dead.reserve("r1", 100)  # leases 500 and dies without settling
    alive = BudgetLedger(budgets(records), clock, 1000, chunk_tokens=1000,
                         lease_expiry=60.0)
    waiting = asyncio.create_task(alive.reserve("r2", 600))  # fits only without the dead lease
    await asyncio.sleep(0.1)
    assert not waiting.done()
    clock.advance(seconds=61)
    with pytest.raises(BudgetExceeded, match="600 tokens requested, 500 of 1000 left"):
        await asyncio.wait_for(waiting, 5)  # not after the request's whole deadline
    await alive.reserve("r3", 400)  # what the dead worker did not hold is still there
    alive.settle("r3", 400)
    await alive.close()
    assert (stored(records).used, stored(records).reserved) == (900, 0)


async def test_concurrent_flushes_settle_each_spent_lease_once(records):
    clock = FixedClock()
    book = ledger(records, clock, limit=100_000, chunk=600)
    for n in range(3):
        await book.reserve(f"r{n}", 600)  # each fills a lease of its own
    for n in range(3):
        book.settle(f"r{n}", 10)  # the first two leases are spent, the third is current
    await asyncio.gather(book.flush(), book.flush(), book.housekeeping())
    assert (stored(records).used, stored(records).reserved) == (20, 600)


async def test_a_live_workers_lease_is_renewed_and_never_expires_under_a_slow_request(records):
    clock = FixedClock()
    slow = ledger(records, clock, limit=1000, chunk=1000)
    slow.lease_expiry = 60.0
    await slow.reserve("r1", 100)  # leases 500, and r1 takes minutes (an open circuit)
    other = BudgetLedger(budgets(records), clock, 1000, chunk_tokens=1000,
                         lease_expiry=60.0, max_wait=0.2)
    for _ in range(6):  # three minutes go by, the slow worker's housekeeping runs
        clock.advance(seconds=30)
        await slow.housekeeping()
    with pytest.raises(BudgetExceeded, match="held for"):  # waits for the room; no expiry
        await other.reserve("r2", 600)
    assert stored(records).used == 0
    slow.settle("r1", 80)
    await slow.close()
    assert (stored(records).used, stored(records).reserved) == (80, 0)


async def test_a_hold_apart_is_in_the_days_budget_itself_and_keeps_no_lease_open(records):
    clock = FixedClock()
    book = ledger(records, clock, limit=10_000)
    other = ledger(records, clock, limit=10_000)
    day = await book.hold_apart("batch:abc", 4_000)
    assert day == "2026-11-25" and book.leases_opened == 0
    assert await other.hold_apart("batch:abc", 4_000) == day  # the same hold, from any replica
    assert stored(records).reservations == {"batch:abc": 4_000}
    # Live requests lease and settle around it as usual.
    await book.reserve("r1", 500)
    book.settle("r1", 100)
    await book.close()
    assert (stored(records).used, stored(records).reserved) == (100, 4_000)
    # Held for hours, it never expires, however long a lease may live.
    clock.advance(hours=20)
    await other.reserve("r2", 10)
    assert "batch:abc" in stored(records).reservations
    # Settled once with what was used, by whoever concludes the request.
    await other.settle_apart(day, "batch:abc", 1_200)
    await book.settle_apart(day, "batch:abc", 1_200)
    assert stored(records).reservations.get("batch:abc") is None
    await other.close()
    assert stored(records).used == 100 + 1_200


async def test_a_hold_apart_is_refused_beyond_the_day_and_released_on_failure(records):
    clock = FixedClock()
    book = ledger(records, clock, limit=1_000)
    with pytest.raises(BudgetExceeded):
        await book.hold_apart("batch:big", 1_001, max_wait=0)
    day = await book.hold_apart("batch:x", 900)
    with pytest.raises(BudgetExceeded):  # held by a request in flight, waited for a while
        await book.hold_apart("batch:y", 200, max_wait=0.05)
    await book.release_apart(day, "batch:x")
    assert await book.hold_apart("batch:y", 200) == day
    assert stored(records).used == 0


async def test_holds_apart_asked_together_go_in_one_write_of_the_budget(records):
    clock = FixedClock()
    book = ledger(records, clock, limit=100_000)
    changes = 0
    change = book.budgets.change

    async def counted(*args, **kwargs):
        nonlocal changes
        changes += 1
        return await change(*args, **kwargs)

    book.budgets.change = counted
    days = await asyncio.gather(*(book.hold_apart(f"batch:{n}", 100) for n in range(30)))
    assert set(days) == {"2026-11-25"} and len(stored(records).reservations) == 30
    assert changes <= 3  # the first alone, then the others together
    await book.conclude_apart("2026-11-25", {f"batch:{n}": 10 if n % 2 else None for n in range(30)})
    assert (stored(records).used, stored(records).reserved) == (150, 0)


async def test_a_hold_apart_taken_again_keeps_its_day_and_tells_who_made_it(records):
    clock = FixedClock()
    book = ledger(records, clock, limit=10_000)
    other = ledger(records, clock, limit=10_000)
    assert await book.take_apart("batch:late", 300) == ("2026-11-25", True)
    clock.advance(days=1)  # a retry after midnight: the hold stays in its first day
    assert await other.take_apart("batch:late", 300, day="2026-11-25") == ("2026-11-25", False)
    assert await book.hold_apart("batch:new", 100) == "2026-11-26"
    assert stored(records).reservations == {"batch:late": 300}
    assert stored(records, "2026-11-26").reservations == {"batch:new": 100}
