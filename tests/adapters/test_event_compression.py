"""Events are compressed where it pays: large ones, not small ones; every form
stored before reads the same."""

import zlib

from adapters.event_store import COMPRESS_FROM_BYTES, ChatRecords, SizedZlibCompressor, event_store_env
from tests.support.conversations import answer, receive
from domain.conversation import Conversation


def test_small_events_are_stored_as_they_are_and_large_ones_compressed():
    compressor = SizedZlibCompressor()
    small = b'{"request_id": "r1", "worker": "w"}'
    large = b'{"message": "' + b"lorem ipsum " * 200 + b'"}'
    assert len(large) >= COMPRESS_FROM_BYTES > len(small)
    assert compressor.compress(small) == small
    packed = compressor.compress(large)
    assert len(packed) < len(large) / 4 and packed[:1] != b"{"
    assert compressor.decompress(packed) == large and compressor.decompress(small) == small
    # As versions before compressed everything, at level 1 or 6.
    assert compressor.decompress(zlib.compress(small, 1)) == small
    assert compressor.decompress(zlib.compress(small, 6)) == small


def test_a_store_written_compressing_everything_reads_and_goes_on(tmp_path):
    url = f"sqlite:///{tmp_path}/events.sqlite"
    old_env = {**event_store_env(url, "secret"),
               "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}
    old = ChatRecords(env=old_env)
    conversation = Conversation("ada@example.com")
    receive(conversation, "r1", "hello")
    answer(conversation, "r1", "hi " * 400)
    old.save(conversation)
    old.close()

    records = ChatRecords(env=event_store_env(url, "secret"))
    try:
        again = records.conversation(conversation.id)
        receive(again, "r2", "and now?")
        answer(again, "r2", "short")
        records.save(again)
        records.repository.cache = None
        loaded = records.conversation(conversation.id)
        assert [turn.reply for turn in loaded.turns] == ["hi " * 400, "short"]
    finally:
        records.close()
