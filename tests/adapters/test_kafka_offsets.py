from adapters.kafka_offsets import OffsetTracker

TP = ("gpt-send", 0)


def test_only_the_finished_prefix_is_committable():
    tracker = OffsetTracker()
    tracker.assign([TP])
    epochs = {offset: tracker.add(TP, offset) for offset in (10, 11, 12, 13)}
    tracker.finish(TP, 12, epochs[12])
    tracker.finish(TP, 13, epochs[13])
    assert tracker.to_commit() == []  # 10 and 11 are still in flight
    tracker.finish(TP, 10, epochs[10])
    assert tracker.to_commit() == [(TP, 11)]
    tracker.finish(TP, 11, epochs[11])
    assert tracker.to_commit() == [(TP, 14)]
    assert tracker.to_commit() == [(TP, 14)]  # offered again until the broker confirms
    tracker.committed(TP, 14)
    assert tracker.to_commit() == []
    assert tracker.unfinished() == 0


def test_work_from_a_revoked_assignment_is_recognised_and_ignored():
    tracker = OffsetTracker()
    tracker.assign([TP])
    old = tracker.add(TP, 5)
    tracker.add(TP, 6)
    tracker.finish(TP, 5, old)
    assert tracker.revoke([TP]) == [(TP, 6)]
    assert not tracker.is_current(TP, old)
    tracker.assign([TP])
    new = tracker.add(TP, 6)
    tracker.finish(TP, 6, old)  # late completion from before the revoke: ignored
    assert tracker.to_commit() == []
    tracker.finish(TP, 6, new)
    assert tracker.to_commit() == [(TP, 7)]


def test_records_of_partitions_not_assigned_are_not_tracked():
    tracker = OffsetTracker()
    assert tracker.add(("other", 3), 1) is None
    assert tracker.revoke([("other", 3)]) == []


def test_a_record_fetched_again_or_out_of_order_is_not_ours_to_answer_twice():
    tracker = OffsetTracker()
    tracker.assign([TP])
    first = tracker.add(TP, 100)
    assert tracker.add(TP, 100) is None  # fetched twice in one assignment
    assert tracker.add(TP, 99) is None  # from before a rebalance
    tracker.finish(TP, 100, first)
    assert tracker.add(TP, 100) is None
    assert tracker.add(TP, 101) is not None


def test_waiting_for_a_partition_to_finish():
    import threading

    tracker = OffsetTracker()
    tracker.assign([TP])
    epoch = tracker.add(TP, 1)
    assert not tracker.wait_finished([TP], 0.05)
    threading.Timer(0.05, tracker.finish, (TP, 1, epoch)).start()
    assert tracker.wait_finished([TP], 5)


def test_a_worker_told_to_stop_stops_waiting_for_a_revoked_partition():
    import threading
    import time

    tracker = OffsetTracker()
    tracker.assign([TP])
    tracker.add(TP, 1)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    began = time.monotonic()
    assert not tracker.wait_finished([TP], 60, stop.is_set)
    assert time.monotonic() - began < 2  # not the whole minute: its shutdown takes over


def test_offsets_never_fetched_are_told(caplog):
    tracker = OffsetTracker()
    tracker.assign([TP], committed={TP: 3})
    with caplog.at_level("WARNING", logger="adapters.kafka_offsets"):
        tracker.add(TP, 3)
        tracker.add(TP, 4)  # one after the other: nothing to tell
        assert caplog.messages == []
        tracker.add(TP, 7)
        tracker.add(TP, 8)
        tracker.assign([("gpt-send", 1)], committed={("gpt-send", 1): 3})
        tracker.add(("gpt-send", 1), 12)  # the first fetched is beyond the committed one
    assert caplog.messages == [
        "gpt-send[0]: offsets 5 to 6 were never fetched (the next one fetched is 7)",
        "gpt-send[1]: offsets 3 to 11 were never fetched (the next one fetched is 12)",
    ]
