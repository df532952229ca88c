"""The audit tells where a pending request's model call went: sent late, taken over
by another worker, abandoned."""

from domain.conversation import Conversation
from entrypoints.audit import describe
from tests.support.conversations import receive


def test_the_audit_describes_calls_sent_late_taken_over_and_abandoned():
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")
    conversation.send_call("r1", "2026-01-01T00:00:02+00:00", "worker-a")
    conversation.abandon_call("r1", "2026-01-01T00:00:05+00:00")
    conversation.take_over_call("r1", "2026-01-01T00:00:06+00:00", "worker-b")
    details = [describe(event)[3] for event in conversation.collect_events()[2:]]
    assert details == [
        "request r1: model call sent (after waiting) by worker worker-a",
        "request r1: model call abandoned before its reply",
        "request r1: model call taken over by worker worker-b",
    ]
