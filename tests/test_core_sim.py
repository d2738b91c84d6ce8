"""The protocol core in virtual time: handshakes, messages, loss, liveness, bad input."""

from __future__ import annotations

import os

import pytest

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.services.rendezvous import INTRO_RETRY
from shoal.core.wire import MIN_INIT_SIZE, PacketKind
from shoal.sim import LinkProfile, SimNetwork, SimNode


def _network(seed: int = 1, profile: LinkProfile | None = None, **config: object):
    net = SimNetwork(seed=seed, profile=profile)
    introducer = net.add_node(config=CoreConfig(introducer=True))
    nodes = [net.add_node(config=CoreConfig(**config)) for _ in range(2)]
    for node in nodes:
        node.endpoint.add_introducer(introducer.address, net.now)
        net.flush(node)
    assert net.run(20, until=lambda: all(
        any(isinstance(e, ev.AddressObserved) for e in n.events) for n in nodes
    ))
    return net, introducer, nodes[0], nodes[1]


def _delivered(node: SimNode, handle: int) -> bool:
    return any(isinstance(e, ev.MessageDelivered) and e.handle == handle for e in node.events)


def _failed(node: SimNode, handle: int) -> ev.MessageFailed | None:
    return next(
        (e for e in node.events if isinstance(e, ev.MessageFailed) and e.handle == handle), None
    )


def test_introduced_nodes_exchange_messages_both_ways() -> None:
    net, _, a, b = _network()
    h1 = a.endpoint.send_message(b.peer_id, b"hello b", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, h1))
    assert [(m.peer_id, m.data) for m in b.received()] == [(a.peer_id, b"hello b")]
    h2 = b.endpoint.send_message(a.peer_id, b"hello a", net.now)
    net.flush(b)
    assert net.run(5, until=lambda: _delivered(b, h2))
    assert [(m.peer_id, m.data) for m in a.received()] == [(b.peer_id, b"hello a")]


def test_observed_address_is_reported_by_the_introducer() -> None:
    _, introducer, a, _ = _network()
    observed = a.endpoint.observed_addresses()
    assert observed[introducer.peer_id] == a.address


@pytest.mark.parametrize("seed", range(5))
def test_large_messages_survive_loss_duplication_and_reordering(seed: int) -> None:
    profile = LinkProfile(latency=0.02, jitter=0.03, loss=0.10, duplicate=0.05)
    net, _, a, b = _network(seed=seed, profile=profile)
    rng = net.rng
    payloads = [rng.randbytes(65536), rng.randbytes(1), b"", rng.randbytes(3000)]
    handles = [a.endpoint.send_message(b.peer_id, p, net.now) for p in payloads]
    net.flush(a)
    ok = net.run(60, until=lambda: all(_delivered(a, h) for h in handles))
    assert ok, f"seed {seed}: not all delivered; stats {a.endpoint.stats}"
    assert sorted(m.data for m in b.received()) == sorted(payloads)  # each exactly once


def test_messages_from_different_senders_never_mix() -> None:
    net, _, a, b = _network(profile=LinkProfile(latency=0.01, jitter=0.02, loss=0.05))
    c = net.add_node()
    c.endpoint.add_introducer(next(iter(net.nodes)), net.now)
    net.flush(c)
    net.run(3)
    data_a, data_c = b"A" * 50000, b"C" * 50000
    ha = a.endpoint.send_message(b.peer_id, data_a, net.now)
    hc = c.endpoint.send_message(b.peer_id, data_c, net.now)
    net.flush(a)
    net.flush(c)
    assert net.run(30, until=lambda: _delivered(a, ha) and _delivered(c, hc))
    got = {(m.peer_id, m.data) for m in b.received()}
    assert got == {(a.peer_id, data_a), (c.peer_id, data_c)}


def test_seeded_runs_are_identical() -> None:
    def trace(seed: int) -> list[str]:
        profile = LinkProfile(latency=0.01, jitter=0.02, loss=0.1, duplicate=0.05)
        net, _, a, b = _network(seed=seed, profile=profile)
        a.endpoint.send_message(b.peer_id, b"x" * 20000, net.now)
        net.flush(a)
        net.run(10)
        return [repr(e) for e in a.events + b.events] + [str(net.now), str(net.delivered)]

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_a_peer_no_introducer_knows_fails_with_ehostunreach_in_two_rounds() -> None:
    net, _, a, _ = _network(message_timeout=30.0)
    handle = a.endpoint.send_message("ab" * 32, b"hi", net.now)
    net.flush(a)
    # The first "unknown" is not the last word: the peer may register just after it.
    assert not net.run(INTRO_RETRY * 0.9, until=lambda: _failed(a, handle) is not None)
    assert net.run(INTRO_RETRY, until=lambda: _failed(a, handle) is not None)
    failure = _failed(a, handle)
    assert failure is not None and failure.code == "EHOSTUNREACH"
    assert "no introducer knows this peer" in failure.reason


def test_a_peer_that_registers_between_two_rounds_is_reached() -> None:
    net, introducer, a, _ = _network(message_timeout=30.0)
    late = net.add_node()
    handle = a.endpoint.send_message(late.peer_id, b"hi", net.now)
    net.flush(a)
    net.run(INTRO_RETRY * 0.5)  # the first round: "unknown"
    late.endpoint.add_introducer(introducer.address, net.now)
    net.flush(late)
    assert net.run(10, until=lambda: _delivered(a, handle))


def test_message_to_a_vanished_peer_times_out() -> None:
    net, _, a, b = _network(message_timeout=5.0)
    warm = a.endpoint.send_message(b.peer_id, b"warm", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, warm))
    b.online = False
    handle = a.endpoint.send_message(b.peer_id, b"lost", net.now)
    net.flush(a)
    # The connection outlives the message (idle timeout 45 s): it fails at its deadline.
    assert not net.run(4.9, until=lambda: _failed(a, handle) is not None)
    assert net.run(0.2, until=lambda: _failed(a, handle) is not None)
    failure = _failed(a, handle)
    assert failure is not None and failure.code == "ETIMEDOUT"


def test_keepalive_holds_a_quiet_session_and_a_dead_peer_is_dropped() -> None:
    net, _, a, b = _network(keepalive_interval=2.0, idle_timeout=6.0)
    handle = a.endpoint.send_message(b.peer_id, b"hi", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, handle))
    net.run(30)  # quiet, but keepalives flow: no disconnect
    assert not any(isinstance(e, ev.PeerDisconnected) for e in a.events)
    assert any(p.peer_id == b.peer_id and p.connected for p in a.endpoint.peers())
    b.online = False
    net.run(10)
    gone = [e for e in a.events if isinstance(e, ev.PeerDisconnected) and e.peer_id == b.peer_id]
    assert gone and "idle" in gone[0].reason
    assert not any(p.peer_id == b.peer_id and p.connected for p in a.endpoint.peers())


def test_forged_and_replayed_datagrams_are_dropped_and_counted() -> None:
    net, _, a, b = _network()
    captured: list[bytes] = []

    def tap(data: bytes, src: tuple, dst: tuple) -> bytes:
        if dst == b.address and data[0] == PacketKind.DATA:
            captured.append(data)
        return data

    net.tap = tap
    handle = a.endpoint.send_message(b.peer_id, b"once", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, handle))
    net.run(1)  # let every captured datagram arrive first

    def drops() -> int:
        stats = b.endpoint.stats
        return (stats["dropped_unauthenticated"] + stats["dropped_unknown_session"]
                + stats["dropped_replay"] + stats["dropped_packet_number"])

    before = drops()
    replays_before = b.endpoint.stats["dropped_replay"]
    for data in captured:  # replay every packet
        b.endpoint.receive_datagram(data, a.address, net.now)
    forged = bytearray(captured[0])
    forged[-1] ^= 0xFF
    b.endpoint.receive_datagram(bytes(forged), a.address, net.now)
    header_flip = bytearray(captured[0])
    header_flip[12] ^= 0x01  # packet number is authenticated as associated data
    b.endpoint.receive_datagram(bytes(header_flip), a.address, net.now)
    net.flush(b)
    assert [m.data for m in b.received()] == [b"once"]
    assert drops() - before == len(captured) + 2
    live = [d for d in captured if d[1:9] in b.endpoint.connections]
    assert live  # the connection that carried the message is still up
    assert b.endpoint.stats["dropped_replay"] - replays_before >= len(live)


def test_short_init_gets_no_answer_and_answers_never_amplify() -> None:
    net = SimNetwork(seed=3)
    target = net.add_node(config=CoreConfig(introducer=True))
    sizes: list[tuple[int, int]] = []
    client = net.add_node()

    def tap(data: bytes, src: tuple, dst: tuple) -> bytes:
        sizes.append((data[0], len(data)))
        return data

    net.tap = tap
    client.endpoint.connect(target.address, net.now)
    net.flush(client)
    net.run(2)
    init = [size for kind, size in sizes if kind == PacketKind.INIT]
    resp = [size for kind, size in sizes if kind == PacketKind.RESP]
    assert init and resp and max(resp) < min(init) == MIN_INIT_SIZE
    truncated = b"\xd1\x01" + os.urandom(200)
    target.endpoint.receive_datagram(truncated, ("10.9.9.9", 1), net.now)
    assert target.endpoint.datagrams_to_send(net.now) == []
    assert target.endpoint.stats["dropped_malformed"] >= 1


def test_handshake_floods_are_rate_limited_per_source() -> None:
    from shoal.core.wire import encode_init

    net = SimNetwork(seed=4)
    target = net.add_node()
    attacker = ("10.66.0.1", 4000)
    answered = 0
    for i in range(200):
        datagram = encode_init(i.to_bytes(8, "big"), net.rng.randbytes(32))
        target.endpoint.receive_datagram(datagram, attacker, 0.0)
        answered += len(target.endpoint.datagrams_to_send(0.0))
    assert answered <= CoreConfig().handshake_burst
    assert target.endpoint.stats["dropped_rate_limited"] >= 200 - answered


def test_a_repeated_identical_init_counts_against_the_limit_like_any_other() -> None:
    from shoal.core.handshake import initiator_state
    from shoal.core.wire import encode_init
    from shoal.identity import Identity

    net = SimNetwork(seed=4)
    target = net.add_node()
    attacker = ("10.66.0.1", 4000)
    datagram = encode_init(b"12345678", initiator_state(Identity.generate(), b"s" * 32)[1])
    answers = []
    for i in range(200):
        target.endpoint.receive_datagram(datagram, attacker, i * 0.001)
        answers += [d for d, _, _ in target.endpoint.datagrams_to_send(i * 0.001)]
    assert 0 < len(answers) <= CoreConfig().handshake_burst + 0.2 * 20
    assert len(set(answers)) == 1  # the same INIT always gets the same RESP, and no state


def test_dialing_the_wrong_identity_is_refused() -> None:
    net = SimNetwork(seed=5)
    a, b, c = net.add_node(), net.add_node(), net.add_node()
    a.endpoint.connect(b.address, net.now, peer_id=c.peer_id)  # b answers, but is not c
    net.flush(a)
    net.run(3)
    assert a.endpoint.stats["dropped_wrong_peer"] == 1
    assert not any(isinstance(e, ev.PeerConnected) for e in a.events)


def test_oversized_message_is_refused_locally() -> None:
    from shoal.errors import LocalProtocolError

    net = SimNetwork(seed=6)
    a, b = net.add_node(config=CoreConfig(max_message_size=1000)), net.add_node()
    with pytest.raises(LocalProtocolError) as info:
        a.endpoint.send_message(b.peer_id, b"x" * 1001, net.now)
    assert info.value.code == "EMSGSIZE"


def test_session_survives_an_address_change() -> None:
    net, _, a, b = _network()
    first = a.endpoint.send_message(b.peer_id, b"before", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, first))
    new = ("10.0.9.9", 40000)  # a NAT rebinding: same node, new source address
    net.move(a, new)
    second = a.endpoint.send_message(b.peer_id, b"after", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, second))
    assert [m.data for m in b.received()] == [b"before", b"after"]
    b_view = next(p for p in b.endpoint.peers() if p.peer_id == a.peer_id)
    assert b_view.address == new


@pytest.mark.parametrize("moving", ["sender", "receiver"])
def test_a_message_goes_on_when_either_side_moves_in_the_middle_of_it(moving: str) -> None:
    """A NAT rebinding (or a new network) mid-transfer. The receiver only acknowledges
    what reaches it, and nothing reaches its new address: after a silence in the middle
    of a message, it PINGs, which shows the sender the way."""
    net, _, a, b = _network(seed=3, profile=LinkProfile(latency=0.02))
    data = bytes(range(256)) * 4096
    handle = a.endpoint.send_message(b.peer_id, data, net.now)
    net.flush(a)

    def halfway() -> bool:
        connection = b.endpoint.connection_to(a.endpoint.identity.public_key)
        return connection is not None and connection.bytes_received > len(data) // 4

    assert net.run(10, until=halfway)
    assert not _delivered(a, handle)
    mover = a if moving == "sender" else b
    new = ("10.0.9.9", 40000)
    net.move(mover, new)
    moved_at = net.now
    assert net.run(60, until=lambda: _delivered(a, handle) or any(
        isinstance(e, ev.MessageFailed) for e in a.events))
    assert _delivered(a, handle)
    assert net.now - moved_at < 3.0
    assert [m.data for m in b.received()] == [data]
    other = b if mover is a else a
    view = next(p for p in other.endpoint.peers() if p.peer_id == mover.peer_id)
    assert view.address == new
    assert (b.endpoint.stats["silence_pings"] > 0) == (moving == "receiver")


def test_only_the_dialing_side_keeps_an_idle_connection_alive() -> None:
    net, introducer, a, _ = _network()
    net.run(5)
    sent: dict[str, int] = {"to_introducer": 0, "from_introducer": 0}

    def count(data: bytes, source: tuple, destination: tuple) -> bytes:
        if destination == introducer.address and source == a.address:
            sent["to_introducer"] += 1
        elif source == introducer.address and destination == a.address:
            sent["from_introducer"] += 1
        return data

    net.tap = count
    net.run(150)
    # a PING every 15 s from the node that dialed, an ACK back for each, nothing more
    assert 9 <= sent["to_introducer"] <= 11
    assert sent["from_introducer"] == sent["to_introducer"]
    assert a.endpoint.connection_to(introducer.endpoint.identity.public_key) is not None
    assert not any(isinstance(e, ev.PeerDisconnected) for e in introducer.events)


def test_idle_connections_hold_no_message_state_until_a_message_comes() -> None:
    net, introducer, a, _ = _network()
    held = introducer.endpoint.connections.values()
    assert held and all("messages" not in connection.state for connection in held)
    introducer.endpoint.serve_channel("")  # an introducer serves no channel unless told
    handle = a.endpoint.send_message(introducer.peer_id, b"to the introducer", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, handle))
    assert [m.data for m in introducer.received()] == [b"to the introducer"]
    carrying = introducer.endpoint.connection_to(a.endpoint.identity.public_key)
    assert carrying is not None and "messages" in carrying.state


def test_connections_beyond_the_cipher_cache_still_talk(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.core import connection as connection_module

    monkeypatch.setattr(connection_module._CIPHERS, "capacity", 2)
    net, introducer, a, b = _network()
    introducer.endpoint.serve_channel("")
    for round_ in range(3):
        for sender, receiver in ((a, b), (b, a), (a, introducer)):
            handle = sender.endpoint.send_message(receiver.peer_id, b"round %d" % round_,
                                                  net.now)
            net.flush(sender)
            assert net.run(5, until=lambda s=sender, h=handle: _delivered(s, h))
    live = [c for n in (a, b, introducer) for c in n.endpoint.connections.values()]
    assert len(live) >= 6
    assert sum(c._ciphers is not None for c in live) <= 2
    assert len(b.received()) == 3 and len(introducer.received()) == 3


def test_an_introducer_holds_far_more_connections_than_a_node() -> None:
    assert CoreConfig().session_limit == 4096
    assert CoreConfig(introducer=True).session_limit == 262_144
    assert CoreConfig(introducer=True, max_sessions=10).session_limit == 10


def test_the_peer_tables_shrink_when_peers_leave() -> None:
    net = SimNetwork(seed=4)
    introducer = net.add_node(config=CoreConfig(introducer=True))
    nodes = [net.add_node() for _ in range(40)]
    for node in nodes:
        node.endpoint.add_introducer(introducer.address, net.now)
        net.flush(node)
    net.run(10)
    first, second = nodes[0], nodes[1]
    handle = first.endpoint.send_message(second.peer_id, b"hello", net.now)
    net.flush(first)
    assert net.run(10, until=lambda: _delivered(first, handle))
    rendezvous = introducer.endpoint.rendezvous
    assert len(rendezvous.registry) == 40 and len(introducer.endpoint.connections) == 40
    assert first.endpoint.identity.public_key in second.endpoint.rendezvous.peers
    first.endpoint.close(net.now)
    net.flush(first)
    first.online = False
    net.run(5)
    assert first.endpoint.identity.public_key not in second.endpoint.rendezvous.peers
    for node in nodes:
        node.endpoint.close(net.now)
        net.flush(node)
        node.online = False
    net.run(120)
    assert introducer.endpoint.connections == {}
    assert rendezvous.registry == {} and rendezvous.peers == {}
    assert len(introducer.endpoint.timers) <= 2  # the node's own (secrets rotation)


def test_an_introduction_never_aims_a_target_at_addresses_a_peer_only_claims() -> None:
    net = SimNetwork(seed=6)
    introducer = net.add_node(config=CoreConfig(introducer=True))
    attacker, target = net.add_node(), net.add_node()
    victims = [("198.51.100.77", 53), ("10.9.9.9", 53), ("192.168.7.7", 80)]
    attacker.endpoint.set_local_addresses([attacker.address, *victims])
    for node in (attacker, target):
        node.endpoint.add_introducer(introducer.address, net.now)
        net.flush(node)
    net.run(10)
    aimed: list[tuple] = []

    def watch(data: bytes, source: tuple, destination: tuple) -> bytes:
        if destination in victims:
            aimed.append((source, destination))
        return data

    net.tap = watch
    handle = attacker.endpoint.send_message(target.peer_id, b"introduce me", net.now)
    net.flush(attacker)
    assert net.run(10, until=lambda: _delivered(attacker, handle))
    net.run(20)
    assert aimed == []
    assert introducer.endpoint.stats["introductions"] >= 1


def test_a_punch_buys_at_most_four_inits() -> None:
    from shoal.core.wire import encode_punch

    net = SimNetwork(seed=8)
    introducer = net.add_node(config=CoreConfig(introducer=True))
    attacker, target = net.add_node(), net.add_node()
    for node in (attacker, target):
        node.endpoint.add_introducer(introducer.address, net.now)
        net.flush(node)
    net.run(10)
    attacker.endpoint.send_message(target.peer_id, b"introduce me", net.now)
    net.flush(attacker)
    net.run(0.025)  # the introduction reached both; no handshake finished yet
    token = attacker.endpoint.rendezvous.peers[target.endpoint.identity.public_key].token
    assert token is not None
    attacker.online = False  # it never answers: the target stays unconnected to it
    victim = (attacker.address[0], 9999)  # another port of the introduced IP
    sent_to_victim = []
    net.tap = lambda data, source, destination: (
        sent_to_victim.append(data[0]) if destination == victim else None) or data
    target.endpoint.receive_datagram(encode_punch(token), victim, net.now)
    net.flush(target)
    net.run(30)
    assert target.endpoint.stats["punches_received"] == 1, target.endpoint.stats
    assert 1 <= len(sent_to_victim) <= 4


def test_a_full_session_table_lets_peers_from_elsewhere_in() -> None:
    """Throw-away identities from one /24 fill the table; a peer from another network
    still connects (the flood's oldest session makes room), while one more from the
    flood's own network is refused."""
    net = SimNetwork(seed=9)
    server = net.add_node(config=CoreConfig(introducer=True, max_sessions=8),
                          address=("203.0.113.1", 7000))
    flood = [net.add_node(address=(f"198.51.100.{i + 1}", 7000)) for i in range(8)]
    for node in flood:
        node.endpoint.send_message(server.peer_id, b"hold a seat", net.now)
        node.endpoint.add_introducer(server.address, net.now)
        net.flush(node)
    net.run(5)
    assert len(server.endpoint.connections) == 8
    latecomer = net.add_node(address=("198.51.100.200", 7000))
    latecomer.endpoint.connect(server.address, net.now)
    handle = latecomer.endpoint.send_message(server.peer_id, b"let me in", net.now)
    net.flush(latecomer)
    started = net.now
    # Refused at once, authenticated, with its own code: not left to time out.
    assert net.run(5, until=lambda: any(isinstance(e, ev.MessageFailed) for e in latecomer.events))
    failure = next(e for e in latecomer.events if isinstance(e, ev.MessageFailed))
    assert (failure.handle, failure.code) == (handle, "ECONNREFUSED")
    assert net.now - started < 0.5
    assert server.endpoint.connection_to(latecomer.endpoint.identity.public_key) is None
    assert not latecomer.endpoint.connections
    assert server.endpoint.stats["refused_busy"] >= 1
    friend = net.add_node(address=("192.0.2.7", 7000))
    friend.endpoint.add_introducer(server.address, net.now)
    net.flush(friend)
    assert net.run(5, until=lambda: server.endpoint.connection_to(
        friend.endpoint.identity.public_key) is not None)
    assert server.endpoint.stats["evicted_sessions"] == 1
    assert len(server.endpoint.connections) == 8
    oldest = flood[0].endpoint.identity.public_key
    assert server.endpoint.connection_to(oldest) is None  # the flood's oldest made room


def test_prefixes_count_per_network() -> None:
    from shoal.core.admission import FairShares, prefix_of

    assert prefix_of(("198.51.100.7", 1)) == prefix_of(("198.51.100.200", 2)) == \
        "198.51.100.0/24"
    assert prefix_of(("2001:db8:1:2::1", 1)) == "2001:db8:1::/48"
    assert prefix_of(("::ffff:198.51.100.7", 1)) == "198.51.100.0/24"
    shares = FairShares()
    for index in range(3):
        shares.add(b"a%d" % index, "a")
    shares.add(b"b0", "b")
    assert shares.victim("b") == b"a0"  # three is two more than one: the oldest of a
    assert shares.victim("a") is None and shares.victim("c") == b"a0"
    shares.remove(b"a0")
    assert shares.victim("b") is None and shares.victim("c") == b"a1"
    shares.remove(b"a1")
    shares.remove(b"a2")
    assert len(shares) == 1 and shares.victim("c") is None


def test_stun_answers_never_amplify_but_for_a_small_budget_per_network() -> None:
    """A spoofed flood of 20-byte Binding requests (what standard clients send) reflects
    at most a few answers a second at the victim's network; padded requests, as Shoal's
    own clients send them, get answers no larger than themselves."""
    from shoal.core import stun

    net = SimNetwork(seed=5)
    server = net.add_node(config=CoreConfig(introducer=True))
    victim = ("192.0.2.77", 4444)
    sent = answered = 0
    for index in range(100):
        request = stun.encode_binding_request(os.urandom(12))
        server.endpoint.receive_datagram(request, (victim[0], victim[1] + index % 3),
                                         net.now + index * 0.01)
        sent += len(request)
        answered += sum(len(d) for d, _, _ in server.endpoint.datagrams_to_send(net.now))
    stats = server.endpoint.stats
    assert stats["dropped_stun_unpadded"] >= 40
    assert stats["dropped_stun_unpadded"] + stats["dropped_rate_limited"] >= 94
    assert answered <= 6 * 32 < sent  # the burst and a second's refill, 32 bytes each
    later = net.now + 10.0
    for index in range(10):
        request = stun.encode_binding_request(os.urandom(12), pad_to=stun.PLAIN_PADDED_SIZE)
        server.endpoint.receive_datagram(request, victim, later + index * 0.1)
        out = server.endpoint.datagrams_to_send(later)
        assert len(out) == 1 and len(out[0][0]) <= len(request)


def test_a_stun_flood_from_a_peers_own_address_does_not_lock_it_out() -> None:
    """STUN requests from a peer's own IP (its neighbours behind one NAT, or a spoofer)
    spend STUN's budget, not the handshakes'."""
    from shoal.core import stun

    net = SimNetwork(seed=6, profile=LinkProfile(latency=0.01))
    server = net.add_node(config=CoreConfig(introducer=True))
    peer = net.add_node()
    joined_at = None
    for index in range(3000):  # 1,000 a second for three seconds; the peer joins at 1 s
        request = stun.encode_binding_request(os.urandom(12), pad_to=stun.PLAIN_PADDED_SIZE)
        server.endpoint.receive_datagram(request, (peer.address[0], 20000 + index % 500),
                                         net.now)
        net.flush(server)
        if index == 1000:
            peer.endpoint.add_introducer(server.address, net.now)
            net.flush(peer)
        net.run(0.001)
        if joined_at is None and server.endpoint.connection_to(
                peer.endpoint.identity.public_key) is not None:
            joined_at = index
    assert server.endpoint.stats["dropped_rate_limited"] >= 2800
    assert joined_at is not None and joined_at < 1100  # within 0.1 s, under the flood


def test_no_packet_kind_makes_an_introducer_answer_more_than_it_received() -> None:
    """bench/amplification.py's measure, smaller: every kind a stranger can send, from
    many sources at once; the bytes answered never exceed the bytes received."""
    import importlib.util
    from pathlib import Path

    where = Path(__file__).resolve().parent.parent / "bench" / "amplification.py"
    spec = importlib.util.spec_from_file_location("amplification_bench", where)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.measure(count=120)
    assert len(results) >= 12
    assert all(r["answered"] <= r["sent"] for r in results.values()), results
    assert results["INIT (fresh identities)"]["answered"] > 0  # it does answer strangers
