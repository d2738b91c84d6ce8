"""Reassembly attacks in virtual time: a peer that starts messages and never ends them,
cuts them into one-byte or empty parts, or spreads them over many connections."""

from __future__ import annotations

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.connection import _CIPHERS
from shoal.core.services.messages import FRAGMENT_OVERHEAD, MESSAGE_OVERHEAD
from shoal.core.wire import MessageFragment
from shoal.sim import LinkProfile, SimNetwork, SimNode

MiB = 1 << 20


def _connected(net: SimNetwork, attacker: SimNode, victim: SimNode) -> None:
    attacker.endpoint.connect(victim.address, net.now)
    net.flush(attacker)
    assert net.run(2, until=lambda: any(
        c.confirmed for c in attacker.endpoint.connections.values()))


def _inject(net: SimNetwork, attacker: SimNode, fragments: list[MessageFragment],
            seconds: float = 20) -> None:
    """Send raw MESSAGE fragments over the attacker's connection, as a hostile peer would."""
    (connection,) = attacker.endpoint.connections.values()
    for fragment in fragments:
        connection.queue_frame(fragment)
    attacker.endpoint.mark(connection)
    net.flush(attacker)
    net.run(seconds, until=lambda: not attacker.endpoint.connections)


def _delivers(net: SimNetwork, sender: SimNode, receiver: SimNode, data: bytes) -> bool:
    sender.endpoint.connect(receiver.address, net.now)
    handle = sender.endpoint.send_message(receiver.peer_id, data, net.now)
    net.flush(sender)
    return net.run(5, until=lambda: any(
        isinstance(e, ev.MessageDelivered) and e.handle == handle for e in sender.events))


def _network(**config: object) -> tuple[SimNetwork, SimNode]:
    net = SimNetwork(seed=3, profile=LinkProfile(latency=0.005))
    return net, net.add_node(config=CoreConfig(**config))


def test_unfinished_messages_close_the_connection_at_its_budget() -> None:
    net, victim = _network(max_reassembly_bytes=MiB)
    attacker = net.add_node()
    _connected(net, attacker, victim)
    (closed,) = victim.endpoint.connections.values()
    # 1,200 messages of 100 kB, each begun with one 1 kB part and never finished.
    _inject(net, attacker, [MessageFragment(0, i, 100_000, 0, bytes(1000)) for i in range(1200)])
    assert not victim.endpoint.connections and not attacker.endpoint.connections
    assert victim.endpoint.messages.stored == 0  # everything it held is given back
    # ... and let go of: no cipher context (which would keep the connection and its
    # unfinished parts alive) and no parts.
    assert closed not in _CIPHERS._holders and closed._ciphers is None
    assert not closed.state["messages"].inbound  # type: ignore[union-attr]
    assert _delivers(net, net.add_node(), victim, b"still serving")


def test_one_byte_parts_are_counted_with_their_overhead() -> None:
    net, victim = _network(max_reassembly_bytes=100_000)
    attacker = net.add_node()
    _connected(net, attacker, victim)
    held: list[int] = []
    real_store = victim.endpoint.messages.flow(
        next(iter(victim.endpoint.connections.values())))._store

    def store(cost: int) -> None:
        real_store(cost)
        held.append(cost)

    next(iter(victim.endpoint.connections.values())).state["messages"]._store = store  # type: ignore[union-attr]
    _inject(net, attacker, [MessageFragment(0, 0, 50_000, i, b"x") for i in range(5000)])
    assert not victim.endpoint.connections
    # Fewer than 1,100 one-byte parts filled a 100 kB budget: each counts its overhead,
    # and the message they belong to counts its own.
    assert held[0] == MESSAGE_OVERHEAD and set(held[1:]) == {1 + FRAGMENT_OVERHEAD}
    assert len(held) - 1 <= (100_000 - MESSAGE_OVERHEAD) // (1 + FRAGMENT_OVERHEAD)
    assert victim.endpoint.messages.stored == 0


def test_empty_parts_of_a_message_close_the_connection() -> None:
    net, victim = _network()
    attacker = net.add_node()
    _connected(net, attacker, victim)
    _inject(net, attacker, [MessageFragment(0, 0, 1000, i, b"") for i in range(10_000)])
    assert not victim.endpoint.connections
    assert victim.endpoint.messages.stored == 0


def test_many_connections_share_one_node_budget_and_the_heaviest_yields() -> None:
    # Windows as large as the budgets: the peers keep to their credit, so it is the
    # reassembly budgets that stop them.
    net, victim = _network(max_reassembly_bytes=MiB, max_reassembly_total=2 * MiB,
                           channel_receive_window=64 * MiB, connection_receive_window=64 * MiB)
    attackers = [net.add_node() for _ in range(4)]
    peaks: list[int] = []
    for attacker in attackers:
        _connected(net, attacker, victim)
    for attacker in attackers:
        # About 890 kB each: under a connection's budget, but four exceed the node's.
        _inject(net, attacker, [MessageFragment(0, i, 100_000, 0, bytes(1000))
                                for i in range(600)], seconds=3)
        peaks.append(victim.endpoint.messages.stored)
    assert max(peaks) <= 2 * MiB
    assert victim.endpoint.stats["reassembly_node_budget"] >= 2
    assert len(victim.endpoint.connections) <= 2
    # A peer holding less than the heaviest gets room: its 500 kB message arrives.
    assert _delivers(net, net.add_node(), victim, bytes(500_000))
    assert victim.endpoint.messages.stored <= 2 * MiB


def test_an_unfinished_message_is_dropped_when_its_time_is_up() -> None:
    net, victim = _network(reassembly_timeout=30.0)
    attacker = net.add_node()
    _connected(net, attacker, victim)
    (connection,) = attacker.endpoint.connections.values()
    connection.queue_frame(MessageFragment(0, 0, 5000, 0, bytes(1000)))
    attacker.endpoint.mark(connection)
    net.flush(attacker)
    net.run(1)
    assert victim.endpoint.messages.stored > 0
    started = net.now
    assert net.run(40, until=lambda: not victim.endpoint.connections)
    assert 28 <= net.now - started <= 31
    assert victim.endpoint.stats["reassembly_timeouts"] == 1
    assert victim.endpoint.messages.stored == 0
