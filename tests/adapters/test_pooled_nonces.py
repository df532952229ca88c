"""The store's AES-GCM cipher draws its nonces from a buffer: the bytes it writes are
eventsourcing's format, and no nonce is handed out twice, across refills and forks."""

from __future__ import annotations

import base64
import os

from eventsourcing.cryptography import AESCipher
from eventsourcing.utils import Environment

from adapters.personal_data import _aes, _Nonces

KEY = bytes(range(32))


def library_cipher() -> AESCipher:
    return AESCipher(Environment(env={"CIPHER_KEY": base64.b64encode(KEY).decode()}))


def test_what_it_seals_the_library_opens_and_the_other_way_round() -> None:
    ours, theirs = _aes(KEY), library_cipher()
    for text in (b"", b"x", b"a conversation's turn " * 200):
        assert theirs.decrypt(ours.encrypt(text)) == text
        assert ours.decrypt(theirs.encrypt(text)) == text


def test_a_tampered_event_is_refused() -> None:
    sealed = bytearray(_aes(KEY).encrypt(b"turn"))
    sealed[-1] ^= 1
    try:
        library_cipher().decrypt(bytes(sealed))
    except ValueError as error:
        assert "Invalid cipher tag" in str(error)
    else:
        raise AssertionError("a changed byte went unnoticed")


def test_no_nonce_is_handed_out_twice_across_refills() -> None:
    nonces = _Nonces()
    taken = [nonces.take() for _ in range(3 * _Nonces.BUFFER // _Nonces.SIZE + 7)]
    assert all(len(nonce) == 12 for nonce in taken)
    assert len(set(taken)) == len(taken)
    # Each encryption takes its own: the nonce leads what is sealed.
    cipher = _aes(KEY)
    assert len({cipher.encrypt(b"same")[:12] for _ in range(1000)}) == 1000


def test_a_forked_child_does_not_repeat_its_parents_nonces() -> None:
    nonces = _Nonces()
    nonces.take()  # the buffer is full of the parent's next nonces
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next nonces, to the parent
        os.close(read)
        os.write(write, b"".join(nonces.take() for _ in range(10)))
        os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = [nonces.take() for _ in range(10)]
    assert len(child) == 120
    assert not {child[n:n + 12] for n in range(0, 120, 12)} & set(parent)
