"""The chain without I/O: frames, links, checkpoints, and what sealing costs."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgguard.audit import records
from pgguard.audit.chain import (FRAME, Chain, CheckpointAt, FrameError, Signer, frame, frames, genesis,
                                 signature_valid, unlinked)
from pgguard.audit.records import Limits


def split(data: bytes) -> list[bytes]:
    return [bytes(payload) for _, payload in frames(data)]


def test_frames_read_back_and_a_cut_frame_is_torn_at_every_length() -> None:
    payloads = [b"", b"a", b"\x00" * 40, b"xyz" * 100]
    data = b"".join(frame(payload) for payload in payloads)
    assert split(data) == payloads
    last = len(data) - len(frame(payloads[-1]))
    for cut in range(last + 1, len(data)):
        with pytest.raises(FrameError) as caught:
            split(data[:cut])
        assert caught.value.torn and caught.value.offset == last


def test_damage_is_not_mistaken_for_a_torn_tail_even_at_the_end() -> None:
    data = frame(b"first") + frame(b"second record")
    second = len(frame(b"first"))
    for position in range(second, len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x40
        with pytest.raises(FrameError) as caught:
            split(bytes(damaged))
        assert not caught.value.torn and caught.value.offset == second, position


def test_zeros_where_a_frame_should_be_are_a_torn_tail() -> None:
    data = frame(b"record") + b"\x00" * 30
    with pytest.raises(FrameError) as caught:
        split(data)
    assert caught.value.torn and caught.value.offset == len(frame(b"record"))


def test_each_record_links_to_the_one_before_and_the_first_to_the_session() -> None:
    chain = Chain("s1")
    first = chain.append({"type": "header", "session_id": "s1"})
    second = chain.append({"type": "statement"})
    one, two = (records.decode(payload) for payload in split(first + second))
    assert (one["seq"], one["prev"]) == (0, genesis("s1"))
    assert (two["seq"], two["prev"]) == (1, hashlib.sha256(first[FRAME.size:]).digest())
    assert genesis("s1") != genesis("s2")


def test_an_unlinked_record_is_not_taken_until_it_is_linked() -> None:
    chain = Chain("s1")
    declined = unlinked({"type": "statement", "sql": "a"}, chain.seq)
    taken = unlinked({"type": "statement", "sql": "b"}, chain.seq)
    assert records.decode(declined)["seq"] == records.decode(taken)["seq"] == 0
    assert (chain.seq, chain.prev) == (0, genesis("s1"))
    sealed = chain.link(taken)
    assert len(sealed) == FRAME.size + len(taken)  # the size admission checked is the size written
    assert records.decode(sealed[FRAME.size:]) == {"type": "statement", "sql": "b", "seq": 0, "prev": genesis("s1")}
    assert (chain.seq, chain.prev) == (1, hashlib.sha256(sealed[FRAME.size:]).digest())


def test_linking_in_two_steps_writes_what_appending_writes() -> None:
    one, two = Chain("s1"), Chain("s1")
    made = [{"type": "header", "prev": b"stale", "session_id": "s1"}, {"type": "statement", "sql": "x" * 300}]
    appended = [one.append(dict(record)) for record in made]
    linked = [two.link(unlinked(dict(record), seq)) for seq, record in enumerate(made)]
    assert appended == linked and one.prev == two.prev


def test_a_checkpoint_is_the_size_it_was_admitted_at() -> None:
    signer = Signer("k1", Ed25519PrivateKey.generate())
    chain = Chain("s1")
    for seq in (0, 1, 127, 128, 65535, 65536):
        chain.seq = seq
        assert len(chain.checkpoint(signer, 1700000000.25)) == signer.checkpoint_size(seq, 1700000000.25), seq


def test_a_checkpoint_signs_its_position_link_time_and_key() -> None:
    key = Ed25519PrivateKey.generate()
    chain = Chain("s1")
    chain.append({"type": "header"})
    checkpoint = records.decode(chain.checkpoint(Signer("k1", key), 1700000000.25)[FRAME.size:])
    assert checkpoint["kid"] == "k1" and checkpoint["seq"] == 1
    assert signature_valid(checkpoint, key.public_key())
    assert not signature_valid(checkpoint, Ed25519PrivateKey.generate().public_key())
    for name, value in (("seq", 2), ("prev", b"\x00" * 32), ("at", 1700000000.5), ("kid", "k2")):
        assert not signature_valid({**checkpoint, name: value}, key.public_key()), name
    assert not signature_valid({**checkpoint, "sig": "not bytes"}, key.public_key())


def test_a_long_chain_numbers_and_frames_every_record() -> None:
    # Its speed is bench/'s business; here only that nothing is lost or renumbered along the way.
    chain = Chain("s1")
    limits = Limits()
    size = 0
    for number in range(10_000):
        size += len(chain.append(records.statement(protocol="simple", sql=f"select {number}", decision="allowed",
                                                   limits=limits)))
    assert chain.seq == 10_000 and size > 10_000 * FRAME.size


def test_a_batch_linked_at_once_is_what_linking_each_record_makes_checkpoints_included() -> None:
    signer = Signer("k1", Ed25519PrivateKey.generate())
    one, two = Chain("s1"), Chain("s1")
    # Record 1 is the checkpoint: the payloads after it are made for seqs 2 and 3.
    first, second, third = (unlinked({"type": "statement", "sql": "x" * size}, seq)
                            for seq, size in ((0, 0), (2, 10), (3, 300)))
    by_one = one.link(first) + one.checkpoint(signer, 1700000000.25) + one.link(second) + one.link(third)
    # Anything that is neither a payload nor a checkpoint (the writer's marks) is passed over.
    assert two.link_all([first, CheckpointAt(1700000000.25), object(), second, third], signer) == by_one
    assert (two.seq, two.prev) == (one.seq, one.prev)
    assert one.seq == 4 and one.prev == hashlib.sha256(by_one[len(by_one) - len(third):]).digest()
