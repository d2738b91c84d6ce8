"""Attacks by a peer that completed a real handshake, in virtual time: it numbers its
packets wildly, binds channels without end, replays handshake packets. Meanwhile an
honest peer keeps exchanging messages with the same node, and must be served."""

from __future__ import annotations

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.connection import CLOSE_PROTOCOL_ERROR, Connection
from shoal.core.handshake import EARLY_WINDOW, initiator_state
from shoal.core.recovery import MAX_PACKET_JUMP
from shoal.core.services.credit import MESSAGE_CHARGE
from shoal.core.services.rendezvous import MAX_LAN_ADDRESSES, MAX_LAN_PEERS
from shoal.core.wire import (
    Channel,
    MessageFragment,
    PacketKind,
    Ping,
    RelayPath,
    RelaySend,
    encode_init,
)
from shoal.identity import Identity
from shoal.sim import LinkProfile, SimNetwork, SimNode


def _network(**config: object) -> tuple[SimNetwork, SimNode]:
    net = SimNetwork(seed=5, profile=LinkProfile(latency=0.005))
    return net, net.add_node(config=CoreConfig(**config))


def _connected(net: SimNetwork, peer: SimNode, victim: SimNode) -> Connection:
    """``peer``'s confirmed connection to ``victim``."""
    peer.endpoint.connect(victim.address, net.now)
    net.flush(peer)

    def connection() -> Connection | None:
        found = peer.endpoint.connection_to(bytes.fromhex(victim.peer_id))
        return found if found is not None and found.confirmed else None

    assert net.run(2, until=lambda: connection() is not None)
    found = connection()
    assert found is not None
    return found


def _send_raw(net: SimNetwork, attacker: SimNode, connection: Connection,
              *frames: object) -> None:
    for frame in frames:
        connection.queue_frame(frame)  # type: ignore[arg-type]
    attacker.endpoint.mark(connection)
    net.flush(attacker)


def _exchange(net: SimNetwork, honest: SimNode, victim: SimNode, count: int,
              seconds: float = 5) -> int:
    """Send ``count`` messages each way between ``honest`` and ``victim``: how many
    were delivered (both directions together)."""
    handles = set()
    for i in range(count):
        handles.add(("h", honest.endpoint.send_message(victim.peer_id, b"h%d" % i, net.now)))
        handles.add(("v", victim.endpoint.send_message(honest.peer_id, b"v%d" % i, net.now)))
    net.flush(honest)
    net.flush(victim)

    def delivered() -> int:
        return sum(1 for e in honest.events if isinstance(e, ev.MessageDelivered)
                   and ("h", e.handle) in handles) + sum(
            1 for e in victim.events if isinstance(e, ev.MessageDelivered)
            and ("v", e.handle) in handles)

    net.run(seconds, until=lambda: delivered() == 2 * count)
    return delivered()


def test_packet_numbers_far_ahead_cost_nothing_and_never_stop_the_node() -> None:
    net, victim = _network()
    attacker, honest = net.add_node(), net.add_node()
    hostile = _connected(net, attacker, victim)
    _connected(net, honest, victim)
    held = next(c for c in victim.endpoint.connections.values()
                if c.peer == attacker.endpoint.identity.public_key)
    # Numbers that cannot be acknowledged (at and above 2^62), a jump of 2^60 and 2^31:
    # each must be refused or cost a bounded window, never memory by the size of the jump.
    for pn in (2**62, 2**64 - 1, 2**60, 2**31, held.replay.highest + MAX_PACKET_JUMP + 1):
        hostile.next_pn = pn
        _send_raw(net, attacker, hostile, Ping())
        net.run(0.05)
        assert held.replay.highest < 2**30
        assert held.replay.bitmap.bit_length() <= held.replay.size
    assert victim.endpoint.stats["dropped_packet_number"] >= 5
    # A jump within the window is taken, and the window stays its size.
    hostile.next_pn = held.replay.highest + MAX_PACKET_JUMP
    _send_raw(net, attacker, hostile, Ping())
    net.run(0.05)
    assert held.replay.highest == hostile.next_pn - 1
    assert held.replay.bitmap.bit_length() <= held.replay.size
    assert _exchange(net, honest, victim, 40) == 80
    assert not victim.endpoint.faults and not victim.endpoint.stats["connection_faults"]


def test_a_failing_connection_never_stops_the_flush_for_other_peers() -> None:
    net, victim = _network()
    attacker, honest = net.add_node(), net.add_node()
    _connected(net, attacker, victim)
    _connected(net, honest, victim)
    held = next(c for c in victim.endpoint.connections.values()
                if c.peer == attacker.endpoint.identity.public_key)
    # Whatever breaks inside one connection (here: an ACK it cannot encode), the others
    # are flushed and served; the broken one is closed and counted.
    held.received.add(2**62)
    held.ack_pending = True
    victim.endpoint.mark(held)
    assert _exchange(net, honest, victim, 40) == 80
    assert held.closed and held.local_sid not in victim.endpoint.connections
    assert victim.endpoint.stats["connection_faults"] == 1


def test_binding_channels_beyond_the_limit_closes_the_connection_with_code_1() -> None:
    net, victim = _network()
    attacker, honest = net.add_node(), net.add_node()
    hostile = _connected(net, attacker, victim)
    _connected(net, honest, victim)
    victim.endpoint.serve_channel("chat/1")
    limit = victim.endpoint.config.max_channels_per_connection
    for start in range(1, limit + 50, 40):
        _send_raw(net, attacker, hostile,
                  *(Channel(n, "chat/1" if n % 2 else "nope") for n in range(start, start + 40)))
        net.run(0.2)
    assert hostile.closed and hostile.close_code == CLOSE_PROTOCOL_ERROR
    assert not any(c.peer == attacker.endpoint.identity.public_key
                   for c in victim.endpoint.connections.values())
    assert victim.endpoint.stats["dropped_malformed"] == 0
    assert victim.endpoint.messages.stored == 0
    assert _exchange(net, honest, victim, 20) == 40


def _failures(node: SimNode) -> list[str]:
    return [e.code for e in node.events if isinstance(e, ev.MessageFailed)]


def test_a_channel_nobody_reads_stops_taking_messages_and_the_sender_is_told() -> None:
    net, victim = _network()
    victim.reads = False  # its application never reads
    attacker, honest = net.add_node(), net.add_node()
    _connected(net, attacker, victim)
    _connected(net, honest, victim)
    for _ in range(200):  # 20 MB through the public API, keeping to the credit
        attacker.endpoint.send_message(victim.peer_id, bytes(100_000), net.now)
    net.flush(attacker)
    net.run(5)
    window = victim.endpoint.config.channel_receive_window
    held = sum(len(e.data) for e in victim.received())
    assert 0 < held <= window and victim.endpoint.messages.unread == held
    # The other peer is not held up by it.
    assert _exchange(net, honest, victim, 40) == 80
    # What never got room fails at the sender, saying why, once its time is up.
    net.run(victim.endpoint.config.message_timeout)
    failures = _failures(attacker)
    assert len(failures) == 200 - held // 100_000 and set(failures) == {"ENOBUFS"}
    assert sum(len(e.data) for e in victim.received()) == held + sum(
        len(b"h%d" % i) for i in range(40))  # and the honest ones, all of them


def test_empty_messages_count_against_the_credit_of_a_channel_nobody_reads() -> None:
    net, victim = _network()
    victim.reads = False
    attacker = net.add_node()
    _connected(net, attacker, victim)
    for _ in range(20_000):  # nothing but their headers: each still costs the victim
        attacker.endpoint.send_message(victim.peer_id, b"", net.now)
    net.flush(attacker)
    net.run(5)
    held = len(victim.received())
    # The window is never less than the largest message, which counts its charge too.
    window = max(victim.endpoint.config.channel_receive_window,
                 victim.endpoint.config.max_message_size) + MESSAGE_CHARGE
    assert 0 < held <= window // MESSAGE_CHARGE, held
    net.run(victim.endpoint.config.message_timeout)
    assert set(_failures(attacker)) == {"ENOBUFS"}


def test_a_peer_that_ignores_its_credit_is_closed_with_code_1() -> None:
    net, victim = _network()
    victim.reads = False
    attacker, honest = net.add_node(), net.add_node()
    hostile = _connected(net, attacker, victim)
    _connected(net, honest, victim)
    for start in range(0, 1500, 100):  # 1.5 MB of whole messages, asked for by nobody
        _send_raw(net, attacker, hostile,
                  *(MessageFragment(0, i, 1000, 0, bytes(1000)) for i in range(start, start + 100)))
        net.run(0.1)
    assert hostile.closed and hostile.close_code == CLOSE_PROTOCOL_ERROR
    assert sum(len(e.data) for e in victim.received()) <= (
        victim.endpoint.config.connection_receive_window)
    assert _exchange(net, honest, victim, 20) == 40


def test_an_introducer_serves_no_channel_it_never_reads() -> None:
    net = SimNetwork(seed=5, profile=LinkProfile(latency=0.005))
    introducer = net.add_node(config=CoreConfig(introducer=True))
    peer = net.add_node()
    _connected(net, peer, introducer)
    for _ in range(50):
        peer.endpoint.send_message(introducer.peer_id, bytes(1000), net.now)
    net.flush(peer)
    net.run(5)
    assert not introducer.received() and introducer.endpoint.messages.unread == 0
    assert _failures(peer) == ["ENOPROTOOPT"] * 50
    assert not any(isinstance(e, ev.MessageDelivered) for e in peer.events)


def test_a_replayed_final_never_replaces_a_live_connection() -> None:
    net, victim = _network()
    peer = net.add_node()
    finals: list[tuple[bytes, tuple]] = []

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes:
        if destination == victim.address and data[0] in (PacketKind.FINAL, PacketKind.FINAL_IK):
            finals.append((data, source))  # an on-path attacker keeps a copy
        return data

    net.tap = tap
    first = _connected(net, peer, victim)
    assert finals
    net.run(6)  # past the crossed-dial window
    # The peer loses its connection (say, it restarts its app) and connects again.
    peer.endpoint.close_connection(first, CLOSE_PROTOCOL_ERROR, "gone", net.now)
    net.flush(peer)
    net.run(1)
    second = _connected(net, peer, victim)
    live = victim.endpoint.connection_to(peer.endpoint.identity.public_key)
    assert live is not None
    for data, source in finals:  # within the secret's lifetime
        victim.endpoint.receive_datagram(data, source, net.now)
    net.flush(victim)
    assert victim.endpoint.connection_to(peer.endpoint.identity.public_key) is live
    assert victim.endpoint.stats["dropped_replayed_final"] >= 1
    handle = victim.endpoint.send_message(peer.peer_id, b"still there", net.now)
    net.flush(victim)
    assert net.run(3, until=lambda: any(
        isinstance(e, ev.MessageDelivered) and e.handle == handle for e in victim.events))
    assert not second.closed


def test_early_data_replayed_after_a_restart_is_not_delivered_again() -> None:
    net = SimNetwork(seed=6, profile=LinkProfile(latency=0.01))
    introducer = net.add_node(config=CoreConfig(introducer=True))
    a, b = net.add_node(), net.add_node()
    for node in (a, b):
        node.endpoint.add_introducer(introducer.address, net.now)
        net.flush(node)
    assert net.run(20, until=lambda: all(
        any(isinstance(e, ev.AddressObserved) for e in n.events) for n in (a, b)))
    captured: list[tuple[bytes, tuple]] = []

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes:
        if data[0] == PacketKind.INIT_IK and destination == b.address:
            captured.append((data, source))
        return data

    net.tap = tap
    handle = a.endpoint.send_message(b.peer_id, b"pay 10 coins", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: any(
        isinstance(e, ev.MessageDelivered) and e.handle == handle for e in a.events))
    assert b.endpoint.stats["early_messages_delivered"] == 1
    # b restarts: same key, same address, a new process that remembers nothing; its
    # driver starts it as every real one does.
    restarted = net.add_node(address=b.address, identity=b.endpoint.identity)
    restarted.endpoint.early_from = net.now + restarted.endpoint.wall_offset + EARLY_WINDOW
    net.run(1.7)
    for datagram, source in captured:
        restarted.endpoint.receive_datagram(datagram, source, net.now)
        net.flush(restarted)
    net.run(2)
    assert not restarted.received()
    assert restarted.endpoint.stats["early_messages_delivered"] == 0


async def test_a_node_on_udp_takes_no_early_message_an_earlier_run_could_have() -> None:
    import time

    import shoal

    before = time.time()
    async with shoal.Node(shoal.Identity.generate(), listen="127.0.0.1:0",
                          lan_discovery=False) as node:
        assert node.endpoint.early_from >= before + EARLY_WINDOW


def _init(net: SimNetwork) -> bytes:
    """A fresh, well-formed INIT (unpadded: pad it for a direct path)."""
    _, message = initiator_state(Identity(net.rng.randbytes(32)), net.rng.randbytes(32))
    return encode_init(net.rng.randbytes(8), message, pad=False)


def test_ipv6_sources_are_limited_by_their_64() -> None:
    net, victim = _network()
    for i in range(300):  # one /64 holds as many addresses as anyone wants
        init = _init(net).ljust(1200, b"\x00")
        victim.endpoint.receive_datagram(init, (f"2001:db8:1:2::{i + 1:x}", 5000), net.now)
    answered = victim.endpoint.stats["handshakes_answered"]
    assert answered <= victim.endpoint.config.handshake_burst
    for i in range(20):  # other /64s are not held back by it
        init = _init(net).ljust(1200, b"\x00")
        victim.endpoint.receive_datagram(init, (f"2001:db8:1:{i + 3:x}::1", 5000), net.now)
    assert victim.endpoint.stats["handshakes_answered"] == answered + 20


def _relayed_pair(**config: object) -> tuple[SimNetwork, SimNode, SimNode, SimNode, Connection]:
    """A relay, a node behind it and a peer of the relay: (net, relay, victim, peer,
    the peer's connection to the relay)."""
    net = SimNetwork(seed=8, profile=LinkProfile(latency=0.005))
    relay = net.add_node()
    victim = net.add_node(config=CoreConfig(**config))
    peer = net.add_node()
    _connected(net, victim, relay)
    return net, relay, victim, peer, _connected(net, peer, relay)


def test_relayed_inits_are_limited_per_relay_and_source() -> None:
    net, _, victim, attacker, to_relay = _relayed_pair()
    target = victim.endpoint.identity.public_key
    for _ in range(10):
        _send_raw(net, attacker, to_relay, *(RelaySend(target, _init(net)) for _ in range(30)))
        net.run(0.05)
    assert victim.endpoint.stats["rx_relayed"] >= 250
    config = victim.endpoint.config
    assert victim.endpoint.stats["handshakes_answered"] <= (
        config.handshake_burst + 0.5 * config.max_handshakes_per_source)


def test_a_relayed_first_contact_with_a_busy_node_follows_its_cookie() -> None:
    net, relay, victim, peer, _ = _relayed_pair(handshake_rate=0.001)  # busy: cookies only
    target = victim.endpoint.identity.public_key
    peer.endpoint.dial(RelayPath(relay.endpoint.identity.public_key, target), net.now,
                       expected=target)
    net.flush(peer)
    assert net.run(3, until=lambda: peer.endpoint.connection_to(target) is not None)
    assert victim.endpoint.stats["cookies_sent"] >= 1
    assert peer.endpoint.stats["cookies_echoed"] >= 1


def test_an_unproven_address_is_sent_at_most_three_times_what_it_sent() -> None:
    net, victim = _network()
    peer = net.add_node()
    _connected(net, peer, victim)
    net.run(1)
    spoofed = ("192.0.2.99", 4000)
    held: list[bytes] = []
    sent_there: list[int] = []

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        if destination == spoofed:
            sent_there.append(len(data))
        if source == peer.address and data[0] == PacketKind.DATA and not held:
            held.append(data)  # an on-path attacker races a copy ahead of it
            return None
        return data

    net.tap = tap
    connection = peer.endpoint.connection_to(victim.endpoint.identity.public_key)
    assert connection is not None
    _send_raw(net, peer, connection, Ping())
    net.run(0.001)
    (fresh,) = held
    victim.endpoint.receive_datagram(fresh, spoofed, net.now)
    net.flush(victim)
    net.run(5)
    assert sent_there and sum(sent_there) <= 3 * len(fresh)


def test_what_the_lan_says_is_bounded() -> None:
    net, victim = _network()
    endpoint = victim.endpoint
    for _ in range(20_000):  # anyone on the LAN can announce any number of peer ids
        endpoint.add_peer_address(net.rng.randbytes(32).hex(), ("10.9.0.1", 7000),
                                  net.now, "lan")
    assert len(endpoint.rendezvous.peers) <= MAX_LAN_PEERS
    # One announcement names 8 addresses for a peer this node has a message for.
    wanted = net.add_node()
    inits: list[tuple] = []
    net.tap = lambda data, source, destination: (
        inits.append(destination) if data[0] == PacketKind.INIT and source == victim.address
        else None) or data
    endpoint.send_message(wanted.peer_id, b"hello", net.now)
    net.flush(victim)
    for i in range(8):
        endpoint.add_peer_address(wanted.peer_id, (f"10.8.0.{i + 1}", 7000), net.now, "lan")
    net.flush(victim)
    net.run(10)
    state = endpoint.rendezvous.peers[wanted.endpoint.identity.public_key]
    assert len([a for a, s in state.addresses.items() if s == "lan"]) <= MAX_LAN_ADDRESSES
    # The first address named is dialed at once; then one dial per address kept (a dial
    # sends 9 INITs in its 10 s at most).
    assert len(set(inits)) <= MAX_LAN_ADDRESSES + 1
    assert len(inits) <= 9 * MAX_LAN_ADDRESSES


def test_the_node_grants_no_room_beyond_its_receive_budget() -> None:
    net, victim = _network(max_receive_total=1 << 20)
    victim.reads = False
    attackers = [net.add_node() for _ in range(4)]
    for attacker in attackers:
        _connected(net, attacker, victim)
        for _ in range(40):
            attacker.endpoint.send_message(victim.peer_id, bytes(50_000), net.now)
        net.flush(attacker)
        net.run(2)
    unread = victim.endpoint.messages.unread
    # The first peer filled the budget; the others got only the room every connection
    # starts with (16 KiB: here not even one of these messages).
    assert (1 << 20) <= unread <= (1 << 20) + victim.endpoint.config.channel_receive_window
    # Once the application reads, room is granted again and the rest arrives.
    victim.reads = True
    for event in victim.received():
        victim.endpoint.message_read(event)
    net.flush(victim)
    net.run(10)
    assert all(_failures(a) == [] for a in attackers)
    assert sum(len(e.data) for e in victim.received()) == 4 * 40 * 50_000
