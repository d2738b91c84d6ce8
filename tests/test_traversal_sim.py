"""NAT traversal in virtual time: NAT detection, strategy choice, birthday punching and
relaying, over the simulator's NAT boxes."""

from __future__ import annotations

import pytest

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.congestion import INITIAL_WINDOW_PACKETS
from shoal.core.connection import Connection
from shoal.core.traversal import (
    ADDRESS_AND_PORT_DEPENDENT as APD,
)
from shoal.core.traversal import (
    ADDRESS_DEPENDENT as AD,
)
from shoal.core.traversal import (
    ENDPOINT_INDEPENDENT as EI,
)
from shoal.core.traversal import (
    POOL_SIZE,
    POOL_SPREAD,
    PROBE_RATE,
    PUNCH_DURATION,
    BirthdayPunch,
    NatType,
    choose_plan,
)
from shoal.core.wire import MAX_DATAGRAM_SIZE, PacketKind
from shoal.sim import LinkProfile, SimNetwork, SimNode

INTRODUCER = ("203.0.113.2", 7000)
ALTERNATE = ("203.0.113.3", 7001)

KINDS: dict[str, tuple[str, str] | None] = {
    "public": None,
    "full-cone": (EI, EI),
    "restricted-cone": (EI, AD),
    "port-restricted": (EI, APD),
    "symmetric": (APD, APD),
}


def _lab(seed: int, kinds: list[str], profile: LinkProfile | None = None,
         config: CoreConfig | None = None) -> tuple[SimNetwork, SimNode, list[SimNode]]:
    net = SimNetwork(seed=seed, profile=profile or LinkProfile(latency=0.025))
    introducer = net.add_node(config=CoreConfig(introducer=True), address=INTRODUCER)
    net.bind(introducer, -1, (INTRODUCER[0], ALTERNATE[1]))
    net.bind(introducer, -2, (ALTERNATE[0], INTRODUCER[1]))
    net.bind(introducer, -3, ALTERNATE)
    introducer.endpoint.set_stun_alternate(INTRODUCER, ALTERNATE, port_socket=-1, ip_socket=-2,
                                           both_socket=-3)
    nodes = []
    for index, kind in enumerate(kinds, start=1):
        behaviour = KINDS[kind]
        if behaviour is None:
            node = net.add_node(address=(f"203.0.113.{100 + index}", 7000), config=config)
        else:
            nat = net.add_nat(f"198.51.100.{index}", mapping=behaviour[0], filtering=behaviour[1])
            node = net.add_node(address=(f"10.{index}.0.2", 7000), nat=nat, config=config)
        node.endpoint.add_introducer(INTRODUCER, net.now)
        net.flush(node)
        nodes.append(node)
    assert net.run(10, until=lambda: all(_nat(n) is not None for n in nodes))
    return net, introducer, nodes


def _nat(node: SimNode) -> ev.NatDetected | None:
    return next((e for e in reversed(node.events) if isinstance(e, ev.NatDetected)), None)


def _delivery(node: SimNode, handle: int) -> ev.MessageDelivered | None:
    return next(
        (e for e in node.events if isinstance(e, ev.MessageDelivered) and e.handle == handle),
        None,
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_nat_check_names_each_kind(kind: str) -> None:
    _, _, (node,) = _lab(1, [kind])
    detected = _nat(node)
    assert detected is not None
    report = detected.report
    expected = KINDS[kind] or (EI, EI)
    assert (report.mapping, report.filtering) == expected
    assert report.nat.public is (kind == "public")
    assert report.udp


def test_nat_check_without_alternate_sees_a_varying_mapping() -> None:
    net = SimNetwork(seed=3)
    servers = [net.add_node(address=(f"203.0.113.{i}", 3478)) for i in (7, 8)]
    nat = net.add_nat("198.51.100.9", mapping=APD, filtering=APD)
    node = net.add_node(address=("10.9.0.2", 7000), nat=nat)
    node.endpoint.start_nat_check(net.now, [s.address for s in servers])
    net.flush(node)
    assert net.run(10, until=lambda: _nat(node) is not None)
    report = _nat(node).report  # type: ignore[union-attr]
    assert report.mapping == "unknown" and report.nat.varies and report.nat.hard
    assert report.filtering == "unknown"
    assert len(report.public) == 2


@pytest.mark.parametrize(
    ("mine", "theirs", "strategy", "role"),
    [
        (NatType(public=True), NatType(APD, APD), "direct", None),
        (NatType(EI, EI), NatType(APD, APD), "direct", None),
        (NatType(EI, APD), NatType(EI, APD), "simultaneous", None),
        (NatType(EI, APD), NatType(APD, APD), "birthday", "probe"),
        (NatType(APD, APD), NatType(EI, AD), "birthday", "pool"),
        (NatType(AD, APD), NatType(APD, APD), "relay", None),
        (NatType(varies=True), NatType(APD, APD), "relay", None),
        (NatType(), NatType(), "simultaneous", None),
    ],
)
def test_strategy_choice(mine: NatType, theirs: NatType, strategy: str, role: str | None) -> None:
    plan = choose_plan(mine, theirs)
    assert (plan.strategy, plan.punch_role) == (strategy, role)
    mirrored = choose_plan(theirs, mine)
    assert mirrored.strategy == strategy
    if role is not None:
        assert mirrored.punch_role == {"pool": "probe", "probe": "pool"}[role]


def test_nat_type_code_round_trips() -> None:
    for mapping in ("unknown", EI, AD, APD):
        for filtering in ("unknown", EI, AD, APD):
            for public in (False, True):
                kind = NatType(mapping, filtering, public, varies=mapping == "unknown")
                assert NatType.from_code(kind.code) == kind


def test_birthday_probes_are_paced_and_never_repeat() -> None:
    counter = iter(range(10**9))
    punch = BirthdayPunch(
        role="probe", peer=b"p" * 32, target=("198.51.100.1", 4000), token=b"t" * 8, now=0.0,
        random_bytes=lambda n: next(counter).to_bytes(n, "big"),
    )
    sent: list[tuple[float, int]] = []
    now = 0.0
    while (deadline := punch.get_timer()) is not None:
        now = deadline
        sent += [(now, dest[1]) for _, dest, socket in punch.due(now) if socket == 0]
    ports = [p for _, p in sent]
    assert len(ports) == len(set(ports))
    per_second = [sum(1 for t, _ in sent if s <= t < s + 1) for s in range(int(PUNCH_DURATION))]
    assert all(0.9 * PROBE_RATE <= n <= 1.1 * PROBE_RATE for n in per_second), per_second
    assert max(t for t, _ in sent) < PUNCH_DURATION


def test_birthday_pool_opens_every_socket_once_over_the_spread() -> None:
    punch = BirthdayPunch(
        role="pool", peer=b"p" * 32, target=("198.51.100.1", 4000), token=b"t" * 8, now=5.0,
        random_bytes=bytes, first_socket=300,
    )
    sent: list[tuple[float, int]] = []
    while (deadline := punch.get_timer()) is not None and deadline < 6.0:
        sent += [(deadline, socket) for _, _, socket in punch.due(deadline)]
    sockets = [s for _, s in sent]
    assert sorted(sockets) == list(range(300, 300 + POOL_SIZE))
    assert max(t for t, _ in sent) - 5.0 <= POOL_SPREAD + 0.05
    first_tick = [s for t, s in sent if t == 5.0]
    assert len(first_tick) < POOL_SIZE // 4  # paced, not one burst


PAIRS = [
    ("public", "symmetric", "direct", "direct"),
    ("full-cone", "symmetric", "direct", "direct"),
    ("port-restricted", "port-restricted", "simultaneous", "direct"),
    ("restricted-cone", "port-restricted", "simultaneous", "direct"),
    ("port-restricted", "symmetric", "birthday", "direct"),
    ("symmetric", "port-restricted", "birthday", "direct"),
    ("symmetric", "symmetric", "relay", "relay"),
]


@pytest.mark.parametrize(("kind_a", "kind_b", "strategy", "path"), PAIRS)
@pytest.mark.parametrize("seed", [1, 2])
def test_pairs_of_nat_kinds_connect(kind_a: str, kind_b: str, strategy: str, path: str,
                                    seed: int) -> None:
    net, introducer, (a, b) = _lab(seed, [kind_a, kind_b])
    start = net.now
    handle = a.endpoint.send_message(b.peer_id, b"across the NATs", net.now)
    net.flush(a)
    assert net.run(30, until=lambda: _delivery(a, handle) is not None)
    delivery = _delivery(a, handle)
    assert delivery is not None and delivery.path == path
    assert [m.data for m in b.received()] == [b"across the NATs"]
    assert a.endpoint.stats[f"plan_{strategy}"] >= 1
    elapsed = net.now - start
    assert elapsed < (10.0 if strategy in ("birthday", "relay") else 1.0), elapsed
    if path == "relay":
        assert introducer.endpoint.stats["relayed_packets"] > 0
    if strategy == "birthday":
        hard = a if kind_a == "symmetric" else b
        assert hard.endpoint.stats["punches_started"] == 1
        # The pool is released once the punch is over, except the socket in use.
        assert net.run(PUNCH_DURATION + 5)
        assert len(hard.sockets) <= 2


def _confirmed_connection(net: SimNetwork, a: SimNode, b: SimNode) -> Connection:
    """``a``'s connection to ``b`` once ``b`` has shown it holds it too and a crossed dial,
    if any, is decided. (The first message rides in the INIT, so it is delivered before
    the handshake ends.)"""
    peer = b.endpoint.identity.public_key

    def settled() -> bool:
        current = a.endpoint.connection_to(peer)
        others = [c for c in a.endpoint.connections_with(peer) if c is not current]
        return current is not None and current.confirmed and all(
            c.draining or c.closed for c in others)

    assert net.run(5, until=settled)
    connection = a.endpoint.connection_to(peer)
    assert connection is not None
    return connection


def _block_direct(net: SimNetwork) -> dict[str, bool]:
    """Drop every datagram between the two NATs' public addresses while the returned
    flag's ``"on"`` is set: only the relay joins the hosts behind them."""
    blocked = {"on": True}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        crossing = source[0].startswith("198.51.100") and destination[0].startswith("198.51.100")
        return None if crossing and blocked["on"] else data

    net.tap = tap
    return blocked


def test_relay_to_direct_upgrade_mid_stream_keeps_every_message_once_in_order() -> None:
    net, _, (a, b) = _lab(4, ["port-restricted", "port-restricted"],
                          config=CoreConfig(punching=False))
    b.endpoint.serve_channel("chat/1")
    # Block direct traffic between the two NATs for a while: only the relay works.
    blocked = _block_direct(net)
    first = a.endpoint.send_message(b.peer_id, b"warm", net.now)
    net.flush(a)
    assert net.run(30, until=lambda: _delivery(a, first) is not None)
    assert _delivery(a, first).path == "relay"  # type: ignore[union-attr]
    connection = _confirmed_connection(net, a, b)
    handles = []
    for i in range(1000):
        channel = "chat/1" if i % 2 else ""
        handles.append(a.endpoint.send_message(b.peer_id, b"%d" % i, net.now, channel=channel))
        if i == 300:
            blocked["on"] = False  # a direct path opens while messages are in flight
        if i % 50 == 0:
            net.flush(a)
            net.run(0.05)
    net.flush(a)
    assert net.run(60, until=lambda: all(_delivery(a, h) for h in handles))
    # One connection throughout: the relay was a path of it, and direct is the next.
    assert a.endpoint.connection_to(b.endpoint.identity.public_key) is connection
    assert connection.path_kind == "direct"
    assert any(isinstance(e, ev.PathChanged) and e.path == "direct" for e in a.events)
    got: dict[str, list[int]] = {"": [], "chat/1": []}
    for message in b.received()[1:]:
        got[message.channel].append(int(message.data))
    assert got[""] == list(range(0, 1000, 2))
    assert got["chat/1"] == list(range(1, 1000, 2))
    paths = {_delivery(a, h).path for h in handles}  # type: ignore[union-attr]
    assert paths == {"relay", "direct"}


def test_a_move_from_the_relay_to_a_direct_path_learns_the_new_path_afresh() -> None:
    """RFC 9000 section 9.4: the window and RTT the relay taught do not carry over; the
    packets still in flight on the relay count until acknowledged, and nothing leaks."""
    net, _, (a, b) = _lab(5, ["port-restricted", "port-restricted"],
                          config=CoreConfig(punching=False))
    blocked = _block_direct(net)
    first = a.endpoint.send_message(b.peer_id, b"warm", net.now)
    net.flush(a)
    assert net.run(30, until=lambda: _delivery(a, first) is not None)
    connection = _confirmed_connection(net, a, b)
    assert connection.path_kind == "relay"
    bulk = [a.endpoint.send_message(b.peer_id, bytes(1_000_000), net.now) for _ in range(3)]
    net.flush(a)
    net.run(2.0)
    initial = INITIAL_WINDOW_PACKETS * MAX_DATAGRAM_SIZE
    assert connection.cc.window > initial  # it grew on the relay
    relay_rtt = connection.rtt.smoothed
    blocked["on"] = False
    assert net.run(15, until=lambda: connection.path_kind == "direct")
    assert connection.cc.window == initial and connection.cc.in_slow_start
    assert connection.cc.bytes_in_flight == sum(
        p.size for p in connection.sent.values() if not p.probe)
    bulk += [a.endpoint.send_message(b.peer_id, bytes(1_000_000), net.now) for _ in range(2)]
    net.flush(a)
    assert net.run(60, until=lambda: all(_delivery(a, h) for h in bulk))
    assert [len(m.data) for m in b.received()[1:]] == [1_000_000] * 5
    # Timed on the direct path alone, which is shorter than the way through the relay.
    assert connection.path_kind == "direct" and connection.rtt.smoothed < relay_rtt
    assert connection.cc.bytes_in_flight == sum(
        p.size for p in connection.sent.values() if not p.probe)


def test_a_direct_path_that_dies_falls_back_to_the_relay_and_comes_back() -> None:
    net, _, (a, b) = _lab(6, ["full-cone", "port-restricted"])
    first = a.endpoint.send_message(b.peer_id, b"direct", net.now)
    net.flush(a)
    assert net.run(10, until=lambda: _delivery(a, first) is not None)
    assert _delivery(a, first).path == "direct"  # type: ignore[union-attr]
    connection = _confirmed_connection(net, a, b)
    blocked = {"on": True}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        crossing = source[0].startswith("198.51.100") and destination[0].startswith("198.51.100")
        return None if crossing and blocked["on"] else data

    net.tap = tap  # the direct path dies (a route or a NAT mapping went away)
    started = net.now
    handles = [a.endpoint.send_message(b.peer_id, b"%d" % i, net.now) for i in range(100)]
    net.flush(a)
    assert net.run(15, until=lambda: all(_delivery(a, h) for h in handles))
    assert net.now - started < 5  # not the 45 s idle timeout
    assert a.endpoint.connection_to(b.endpoint.identity.public_key) is connection
    assert connection.path_kind == "relay"
    assert [m.data for m in b.received()] == [b"direct"] + [b"%d" % i for i in range(100)]
    blocked["on"] = False  # the direct path works again: the connection goes back to it
    assert net.run(30, until=lambda: connection.path_kind == "direct")
    last = a.endpoint.send_message(b.peer_id, b"direct again", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivery(a, last) is not None)
    assert _delivery(a, last).path == "direct"  # type: ignore[union-attr]
    assert b.received()[-1].data == b"direct again" and len(b.received()) == 102


@pytest.mark.parametrize(("message", "refused"), [
    (b"secret", "dropped_handshake"),  # small: it rides in the INIT_IK
    (b"secret" * 300, "dropped_unauthenticated"),  # too large for that: DATA packets
])
def test_a_relay_cannot_alter_what_it_carries(message: bytes, refused: str) -> None:
    net, introducer, (a, b) = _lab(5, ["symmetric", "symmetric"])
    relay = introducer.endpoint.relay
    original = relay.forward

    def tamper(connection, frame, now):  # flips one bit of every relayed DATA packet,
        packet = frame.packet               # and of the early message an INIT_IK carries
        if packet[0] == PacketKind.DATA:
            packet = packet[:-1] + bytes([packet[-1] ^ 1])
        elif packet[0] == PacketKind.INIT_IK:  # its last byte is the cookie's length
            packet = packet[:-2] + bytes([packet[-2] ^ 1]) + packet[-1:]
        original(connection, type(frame)(frame.peer, packet), now)

    relay.forward = tamper  # type: ignore[method-assign]
    handle = a.endpoint.send_message(b.peer_id, message, net.now)
    net.flush(a)
    net.run(8)
    assert _delivery(a, handle) is None
    assert b.received() == []
    assert b.endpoint.stats[refused] > 0


def test_relay_quota_limits_a_greedy_peer() -> None:
    config = CoreConfig(introducer=True, relay_bytes_per_second=20_000)
    net = SimNetwork(seed=6, profile=LinkProfile(latency=0.01))
    introducer = net.add_node(config=config, address=INTRODUCER)
    nodes = []
    for index in (1, 2):
        nat = net.add_nat(f"198.51.100.{index}", mapping=APD, filtering=APD)
        node = net.add_node(address=(f"10.{index}.0.2", 7000), nat=nat,
                            config=CoreConfig(nat_check=False))
        node.endpoint.set_nat_type(NatType(APD, APD))
        node.endpoint.add_introducer(INTRODUCER, net.now)
        net.flush(node)
        nodes.append(node)
    a, b = nodes
    assert net.run(10, until=lambda: all(
        any(isinstance(e, ev.AddressObserved) for e in n.events) for n in nodes))
    handle = a.endpoint.send_message(b.peer_id, bytes(150_000), net.now)
    net.flush(a)
    assert net.run(60, until=lambda: _delivery(a, handle) is not None)
    stats = introducer.endpoint.stats
    assert stats["dropped_relay_quota"] > 0
    # Delivered all the same: the end-to-end session retransmits what the relay dropped.
    assert len(b.received()[0].data) == 150_000
    assert net.now > 150_000 / 20_000 / 2


@pytest.mark.parametrize(("kind_a", "kind_b", "path"), [
    ("symmetric", "port-restricted", "direct"),
    ("port-restricted", "symmetric", "direct"),
    ("symmetric", "symmetric", "relay"),
])
def test_a_sender_that_has_not_finished_its_nat_check_replans(kind_a: str, kind_b: str,
                                                              path: str) -> None:
    net, _, (b,) = _lab(7, [kind_b])
    behaviour = KINDS[kind_a]
    assert behaviour is not None
    nat = net.add_nat("198.51.100.77", mapping=behaviour[0], filtering=behaviour[1])
    a = net.add_node(address=("10.77.0.2", 7000), nat=nat)
    a.endpoint.add_introducer(INTRODUCER, net.now)
    handle = a.endpoint.send_message(b.peer_id, b"early", net.now)
    net.flush(a)
    start = net.now
    assert net.run(30, until=lambda: _delivery(a, handle) is not None)
    assert _delivery(a, handle).path == path  # type: ignore[union-attr]
    assert net.now - start < 10.0


def test_a_new_public_address_triggers_a_new_nat_check() -> None:
    net, _, (node,) = _lab(8, ["port-restricted"])
    checks = sum(isinstance(e, ev.NatDetected) for e in node.events)
    assert checks == 1
    # The node moves behind a symmetric NAT (a new network): the introducer sees the new
    # address on the next packet, says so, and the node checks its NAT again.
    symmetric = net.add_nat("198.51.100.99", mapping=APD, filtering=APD)
    node.nat = symmetric
    net.move(node, ("10.99.0.2", 7000))
    node.endpoint.set_local_addresses([node.address])
    assert net.run(40, until=lambda: sum(isinstance(e, ev.NatDetected) for e in node.events) > 1)
    assert node.endpoint.nat.hard


def test_relay_quotas_bound_targets_pairs_and_bytes() -> None:
    from shoal.core.relay import RelayQuotas

    config = CoreConfig(max_relay_targets=2, max_relayed_pairs=3, relay_bytes_per_second=1000,
                        idle_timeout=10.0)
    alive = {b"a", b"b", b"t1", b"t2", b"t3"}
    quotas = RelayQuotas(config, lambda peer: peer in alive)
    assert quotas.admit(b"a", b"t1", 100, 0.0)
    assert quotas.admit(b"a", b"t2", 100, 0.0)
    assert not quotas.admit(b"a", b"t3", 100, 0.0)  # a third target for one source
    assert quotas.admit(b"b", b"t3", 100, 0.0)
    assert not quotas.admit(b"b", b"t1", 100, 0.0)  # three pairs in all
    alive.discard(b"t2")  # a gone peer frees its pair, at the next sweep (one a second)
    assert not quotas.admit(b"b", b"t1", 100, 0.5)
    assert quotas.admit(b"b", b"t1", 100, 1.1)
    assert quotas.admit(b"a", b"t3", 100, 20.0)  # idle pairs expire
    # Bytes: a two-second burst, then the rate.
    assert quotas.admit(b"a", b"t3", 1700, 20.0)
    assert not quotas.admit(b"a", b"t3", 500, 20.0)
    assert quotas.admit(b"a", b"t3", 500, 20.5)


def test_heavy_sources_share_the_node_wide_relay_budget_and_a_light_one_still_passes() -> None:
    from shoal.core.relay import LIGHT_RATE, RelayQuotas

    config = CoreConfig(relay_bytes_per_second=1e6, relay_total_bytes_per_second=1e5)
    quotas = RelayQuotas(config, lambda peer: True)
    heavy = [bytes([i]) for i in range(8)]
    relayed = 0
    for step in range(1000):  # ten seconds of 8 sources pushing 1,000 bytes each 10 ms
        now = step / 100
        relayed += sum(quotas.admit(source, b"t", 1000, now) for source in heavy)
    # The node's budget (two seconds' burst, then its rate) and each source's light
    # allowance: far below the 8 x 1 MB/s the sources may send one by one.
    assert relayed * 1000 <= 2e5 + 10 * 1e5 + len(heavy) * (2 * LIGHT_RATE + 10 * LIGHT_RATE)
    assert relayed * 1000 >= 10 * 1e5
    chat = [quotas.admit(b"chat", b"t", 200, 10 + i / 10) for i in range(50)]
    assert all(chat)


def test_a_relay_filled_by_a_few_sources_still_takes_a_new_pair() -> None:
    """64 sources x 16 targets fill every relayed pair; a newcomer still gets one, taken
    from the heaviest source's least recently used pair, and a source is never squeezed
    below what the newcomer holds."""
    from shoal.core.relay import RelayQuotas

    config = CoreConfig(max_relay_targets=16, max_relayed_pairs=1024, idle_timeout=60.0)
    quotas = RelayQuotas(config, lambda peer: True)
    sources = [b"attacker-%02d" % i for i in range(64)]
    for source in sources:
        for t in range(16):
            assert quotas.admit(source, b"target-%02d" % t, 100, 1.0 + t / 100)
    assert quotas.pairs == 1024
    assert quotas.admit(b"newcomer", b"friend", 100, 2.0)
    assert quotas.pairs == 1024 and quotas.evicted == 1
    assert quotas.admit(b"newcomer", b"friend", 100, 2.1)  # its pair stays in use
    # The pair that went was the oldest of one of the heaviest sources; that source
    # cannot take it back from another source holding no more than it held.
    taken = [s for s in sources if not quotas.admit(s, b"target-00", 0, 2.2)]
    assert taken == [sources[0]] and quotas.evicted == 1
    # With everyone at one pair, nobody is evicted for another single pair.
    small = RelayQuotas(CoreConfig(max_relay_targets=16, max_relayed_pairs=4,
                                   idle_timeout=60.0), lambda peer: True)
    for index in range(4):
        assert small.admit(b"s%d" % index, b"t", 10, 0.0)
    assert not small.admit(b"s9", b"t", 10, 0.0) and small.evicted == 0


@pytest.mark.parametrize(("kinds", "path"), [
    (["symmetric", "symmetric"], "relay"),
    (["port-restricted", "port-restricted"], "direct"),
])
def test_a_peer_restarted_behind_its_nat_is_found_through_the_relay(kinds: list[str],
                                                                    path: str) -> None:
    """The peer's new run sits behind the same NAT on another port, so nothing reaches it
    at the address the connection knows: a handshake through the introducer the new run
    registered with finds it, and a message in flight goes on there."""
    config = CoreConfig(punching=path == "direct")
    net, _, (a, b) = _lab(4, kinds, config=config)
    warm = a.endpoint.send_message(b.peer_id, b"warm", net.now)
    net.flush(a)
    assert net.run(30, until=lambda: _delivery(a, warm) is not None)
    assert _confirmed_connection(net, a, b).path_kind == path
    net.run(8)
    data = bytes(range(256)) * 4096
    handle = a.endpoint.send_message(b.peer_id, data, net.now)
    net.flush(a)
    net.run(0.3)
    assert _delivery(a, handle) is None
    b.online = False
    del net.nodes[b.address]
    net._bound.pop(b.address)
    again = net.add_node(identity=b.endpoint.identity, address=(b.address[0], 7001),
                         nat=b.nat, config=config)
    again.endpoint.add_introducer(INTRODUCER, net.now)
    net.flush(again)
    restarted = net.now
    assert net.run(60, until=lambda: _delivery(a, handle) is not None or any(
        isinstance(e, ev.MessageFailed) for e in a.events))
    assert _delivery(a, handle) is not None
    assert net.now - restarted < 5.0
    assert [m.data for m in again.received()] == [data]
    assert a.endpoint.stats["peer_restarts"] == 1
