"""The first message in the INIT (Noise IK), in the simulator: one round trip sooner, never
delivered twice (lost answers, repeated INITs, replays, a clock far off), in order with
what follows, and not readable by an introducer that lies about the key."""

from __future__ import annotations

import pytest

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.handshake import EARLY_WINDOW, MAX_EARLY
from shoal.core.wire import PacketKind
from shoal.sim import LinkProfile, SimNetwork, SimNode

LATENCY = 0.02


def _network(seed: int = 1) -> tuple[SimNetwork, SimNode, SimNode, SimNode]:
    net = SimNetwork(seed=seed, profile=LinkProfile(latency=LATENCY))
    introducer = net.add_node(config=CoreConfig(introducer=True))
    a, b = (net.add_node(config=CoreConfig()) for _ in range(2))
    for node in (a, b):
        node.endpoint.add_introducer(introducer.address, net.now)
        net.flush(node)
    assert net.run(20, until=lambda: all(
        any(isinstance(e, ev.AddressObserved) for e in n.events) for n in (a, b)))
    return net, introducer, a, b


def _outcome(node: SimNode, handle: int) -> ev.Event | None:
    return next((e for e in node.events if isinstance(e, ev.MessageDelivered | ev.MessageFailed)
                 and e.handle == handle), None)


def _send(net: SimNetwork, node: SimNode, to: SimNode, data: bytes, channel: str = "") -> int:
    handle = node.endpoint.send_message(to.peer_id, data, net.now, channel=channel)
    net.flush(node)
    return handle


def _first_contact(size: int) -> float:
    net, _, a, b = _network()
    started = net.now
    handle = _send(net, a, b, bytes(size))
    assert net.run(5, until=lambda: _outcome(a, handle) is not None)
    assert isinstance(_outcome(a, handle), ev.MessageDelivered)
    assert [len(m.data) for m in b.received()] == [size]
    assert b.endpoint.stats["early_messages_delivered"] == (size < MAX_EARLY)
    return net.now - started


def test_a_small_first_message_is_acknowledged_one_round_trip_sooner() -> None:
    took = {size: _first_contact(size) for size in (100, MAX_EARLY + 100)}
    # The lookup (a round trip to the introducer) and then: INIT and RESP, against
    # INIT, RESP, FINAL with the message, and its acknowledgement (the second message
    # is too large to ride in the INIT).
    rtt = 2 * LATENCY
    assert took[100] == pytest.approx(2 * rtt, abs=0.005)
    assert took[MAX_EARLY + 100] >= took[100] + rtt - 0.005


def test_lost_answers_and_repeated_inits_deliver_the_message_once() -> None:
    net, _, a, b = _network(seed=2)
    dropped = {"resp": 0}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        if data[0] == PacketKind.RESP and source == b.address and dropped["resp"] < 3:
            dropped["resp"] += 1  # b answers, a never hears: a sends the INIT again
            return None
        return data

    net.tap = tap
    handle = _send(net, a, b, b"once")
    assert net.run(10, until=lambda: _outcome(a, handle) is not None)
    assert isinstance(_outcome(a, handle), ev.MessageDelivered)
    assert dropped["resp"] == 3
    net.run(2)
    assert [m.data for m in b.received()] == [b"once"]
    assert b.endpoint.stats["early_messages_delivered"] == 1


@pytest.mark.parametrize("later", [5.0, 3 * EARLY_WINDOW])
def test_a_replayed_init_delivers_nothing(later: float) -> None:
    net, _, a, b = _network(seed=3)
    captured: list[tuple[bytes, tuple]] = []

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        if data[0] == PacketKind.INIT_IK and destination == b.address:
            captured.append((data, source))
        return data

    net.tap = tap
    handle = _send(net, a, b, b"pay 10 coins")
    assert net.run(5, until=lambda: _outcome(a, handle) is not None)
    net.run(later)
    for datagram, source in captured:  # the attacker replays what it saw, as it saw it
        b.endpoint.receive_datagram(datagram, source, net.now)
        b.endpoint.receive_datagram(datagram, ("192.0.2.66", 4444), net.now)  # and spoofed
        net.flush(b)
    net.run(2)
    assert [m.data for m in b.received()] == [b"pay 10 coins"]


def test_a_clock_far_off_sends_the_message_the_usual_way() -> None:
    net, _, a, b = _network(seed=4)
    a.endpoint.wall_offset = 3600.0  # an hour ahead of b: its INIT's stamp is refused
    handle = _send(net, a, b, b"late")
    assert net.run(5, until=lambda: _outcome(a, handle) is not None)
    assert isinstance(_outcome(a, handle), ev.MessageDelivered)
    assert [m.data for m in b.received()] == [b"late"]
    assert b.endpoint.stats["early_messages_delivered"] == 0


def test_messages_after_the_first_keep_their_order() -> None:
    net, _, a, b = _network(seed=5)
    handles = [_send(net, a, b, b"%d" % i) for i in range(20)]
    assert net.run(10, until=lambda: all(_outcome(a, h) for h in handles))
    assert [m.data for m in b.received()] == [b"%d" % i for i in range(20)]
    assert b.endpoint.stats["early_messages_delivered"] == 1


def test_a_channel_the_peer_does_not_serve_fails_as_usual() -> None:
    net, _, a, b = _network(seed=6)
    handle = _send(net, a, b, b"hi", channel="games/1")
    assert net.run(5, until=lambda: _outcome(a, handle) is not None)
    failed = _outcome(a, handle)
    assert isinstance(failed, ev.MessageFailed) and failed.code == "ENOPROTOOPT"
    assert b.received() == []
    served = _send(net, a, b, b"still connected")
    assert net.run(5, until=lambda: _outcome(a, served) is not None)
    assert [m.data for m in b.received()] == [b"still connected"]


def test_an_introducer_that_lies_about_the_key_learns_nothing() -> None:
    net, introducer, a, b = _network(seed=7)
    liar = net.add_node(config=CoreConfig())  # its key stands in for b's
    for connection in introducer.endpoint.connections.values():
        if connection.peer == b.endpoint.identity.public_key:
            connection.peer_endorsement = liar.endpoint.identity.static_public + \
                connection.peer_endorsement[32:]
    handle = _send(net, a, b, b"for b only")
    assert net.run(5, until=lambda: _outcome(a, handle) is not None)
    assert isinstance(_outcome(a, handle), ev.MessageDelivered)
    # The signature did not cover the key given: a used XX, which needs no key ahead.
    assert b.endpoint.stats["early_messages_delivered"] == 0
    assert [m.data for m in b.received()] == [b"for b only"]


def test_an_init_that_never_gets_through_fails_the_message_rather_than_risk_it_twice(
        ) -> None:
    net, _, a, b = _network(seed=8)

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        return None if data[0] == PacketKind.INIT_IK else data

    net.tap = tap
    handle = _send(net, a, b, b"lost")
    assert net.run(20, until=lambda: _outcome(a, handle) is not None)
    failed = _outcome(a, handle)
    assert isinstance(failed, ev.MessageFailed) and failed.code == "ETIMEDOUT"
    later = _send(net, a, b, b"after")  # the connection b opened meanwhile carries on
    assert net.run(5, until=lambda: _outcome(a, later) is not None)
    assert [m.data for m in b.received()] == [b"after"]


def test_a_full_table_of_early_ids_sends_first_messages_the_usual_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.core.services import messages

    monkeypatch.setattr(messages, "MAX_EARLY_SEEN", 4)
    net, _, a, b = _network(seed=9)
    seen = b.endpoint.messages._early_seen
    for index in range(4):  # as a flood of authenticated INIT_IKs would leave it
        seen[bytes(32) + index.to_bytes(8, "big")] = net.now + 60
    handle = _send(net, a, b, b"still arrives")
    assert net.run(5, until=lambda: _outcome(a, handle) is not None)
    assert isinstance(_outcome(a, handle), ev.MessageDelivered)
    assert [m.data for m in b.received()] == [b"still arrives"]
    assert b.endpoint.stats["early_messages_delivered"] == 0 and len(seen) == 4
