"""Group posts and keys: authorship, confidentiality, removal, invites, hostile bytes."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.groups.posts import (
    ForgedPostError,
    GroupAdmin,
    GroupKeys,
    Invite,
    MemberCard,
    PostError,
    TamperedPostError,
    UnknownEpochError,
    open_grant,
    open_post,
    parse_envelope,
    seal_post,
)
from shoal.errors import LocalProtocolError, RemoteProtocolError
from shoal.identity import Identity

NOW = 1_760_000_000_000


def source(seed: int):
    return random.Random(seed).randbytes


def person(seed: int) -> Identity:
    return Identity(random.Random(seed).randbytes(32))


@pytest.fixture
def group():
    admin = GroupAdmin.create("team-notes", source(1))
    alice, bob, carol = person(2), person(3), person(4)
    for member in (alice, bob, carol):
        admin.add_member(MemberCard.decode(MemberCard.of(member).encode()))
    return admin, alice, bob, carol


def test_a_member_reads_what_another_wrote_and_knows_who_wrote_it(group):
    admin, alice, _, _ = group
    keys = Invite.decode(admin.invite(["127.0.0.1:4000"])).keys()
    envelope = seal_post(alice, keys, data=b"hello", topic="notes", parents=[bytes(32)],
                         time_ms=NOW, random_bytes=source(5))
    carried = parse_envelope(envelope.raw)  # what a non-member checks and stores
    assert carried.id == hashlib.sha256(envelope.raw).digest() == envelope.id
    assert carried.author == alice.public_key and carried.tag == keys.tag != keys.group_id
    assert b"hello" not in envelope.raw and b"notes" not in envelope.raw
    post = open_post(carried, Invite.decode(admin.invite()).keys())
    assert (post.author, post.data, post.topic, post.parents) == (
        alice.peer_id, b"hello", "notes", (bytes(32),))
    assert post.time == NOW / 1000 and post.id == envelope.id
    with pytest.raises(UnknownEpochError) as caught:
        open_post(carried, GroupKeys(keys.group_id))  # a carrier without keys
    assert caught.value.code == "ENOKEY"
    other = Invite.decode(GroupAdmin.create("other", source(9)).invite()).keys()
    with pytest.raises(PostError):
        open_post(carried, other)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_changed_byte_makes_a_post_a_forgery(data):
    admin = GroupAdmin.create("g", source(1))
    envelope = seal_post(person(2), admin.keys, data=b"x" * 40, time_ms=NOW,
                         random_bytes=source(5))
    raw = bytearray(envelope.raw)
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(PostError):  # Forged, or malformed if the version or kind changed
        parse_envelope(bytes(raw))


def test_no_one_posts_as_another_author(group):
    admin, alice, bob, _ = group
    genuine = seal_post(alice, admin.keys, data=b"pay bob", time_ms=NOW,
                        random_bytes=source(5))
    raw = bytearray(genuine.raw)
    raw[38:70] = bob.public_key  # claim bob wrote it, keep alice's signature
    with pytest.raises(ForgedPostError) as caught:
        parse_envelope(bytes(raw))
    assert caught.value.code == "EPERM"


def test_a_signed_post_that_does_not_decrypt_is_tampered(group):
    admin, alice, _, _ = group
    wrong = GroupKeys(admin.keys.group_id, {0: bytes(32)})
    envelope = seal_post(alice, wrong, data=b"junk", time_ms=NOW, random_bytes=source(5))
    with pytest.raises(TamperedPostError) as caught:
        open_post(parse_envelope(envelope.raw), admin.keys)
    assert caught.value.code == "EBADMSG"


def test_a_removed_member_cannot_read_what_is_posted_after(group):
    admin, alice, bob, carol = group
    keys = {member.peer_id: Invite.decode(admin.invite()).keys()
            for member in (alice, bob, carol)}
    before = seal_post(alice, keys[alice.peer_id], data=b"before", time_ms=NOW,
                       random_bytes=source(6))
    grant = parse_envelope(admin.remove(carol.public_key, NOW + 1, source(7)).raw)
    assert grant.epoch == 1
    assert open_grant(grant, alice, keys[alice.peer_id])
    assert open_grant(grant, bob, keys[bob.peer_id])
    assert not open_grant(grant, carol, keys[carol.peer_id])
    after = seal_post(alice, keys[alice.peer_id], data=b"after", time_ms=NOW + 2,
                      random_bytes=source(8))
    assert after.epoch == 1
    assert open_post(parse_envelope(after.raw), keys[bob.peer_id]).data == b"after"
    with pytest.raises(UnknownEpochError):
        open_post(parse_envelope(after.raw), keys[carol.peer_id])
    # The guarantee's limit: what the removed member could read, it still can.
    assert open_post(parse_envelope(before.raw), keys[carol.peer_id]).data == b"before"


def test_only_the_group_key_grants_epoch_keys(group):
    admin, alice, _, _ = group
    impostor = GroupAdmin.create("team-notes", source(11))
    impostor.add_member(MemberCard.of(alice))
    fake = bytearray(impostor.grant([alice.public_key], NOW, source(12)).raw)
    fake[2:34] = admin.keys.tag  # aimed at the real group
    with pytest.raises(ForgedPostError):
        parse_envelope(bytes(fake))
    keys = Invite.decode(admin.invite()).keys()
    with pytest.raises(PostError):
        open_grant(parse_envelope(impostor.grant([alice.public_key], NOW, source(13)).raw),
                   alice, keys)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_hostile_bytes_raise_only_the_remote_error(raw):
    keys = GroupAdmin.create("g", source(1)).keys
    try:
        envelope = parse_envelope(raw)
        open_post(envelope, keys)
    except RemoteProtocolError:
        pass


def test_invites_round_trip_and_damage_is_a_local_error(group):
    admin, _, _, _ = group
    text = admin.invite(["127.0.0.1:4000", "a" * 64])
    invite = Invite.decode(text)
    assert (invite.group_id, invite.epoch, invite.name, invite.hints) == (
        admin.keys.group_id, 0, "team-notes", ("127.0.0.1:4000", "a" * 64))
    for damaged in ("", "hello", text[:-5], text + "AAAA", "shoal-group:!!!"):
        with pytest.raises(LocalProtocolError):
            Invite.decode(damaged)


def test_a_member_card_must_be_endorsed_by_its_peer_id(group):
    _, alice, bob, _ = group
    card = MemberCard.of(alice)
    forged = MemberCard(alice.public_key, bob.static_public, card.proof)
    with pytest.raises(RemoteProtocolError):
        MemberCard.decode(forged.encode())
    with pytest.raises(RemoteProtocolError):
        MemberCard.decode(b"short")


def test_posting_limits_are_local_errors(group):
    admin, alice, _, _ = group
    with pytest.raises(LocalProtocolError):
        seal_post(alice, admin.keys, data=b"", topic="t" * 300, time_ms=NOW,
                  random_bytes=source(1))
    with pytest.raises(LocalProtocolError):
        seal_post(alice, admin.keys, data=b"", parents=[b"short"], time_ms=NOW,
                  random_bytes=source(1))
    with pytest.raises(LocalProtocolError):
        seal_post(alice, admin.keys, data=bytes(300_000), time_ms=NOW,
                  random_bytes=source(1))
