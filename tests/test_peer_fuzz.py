"""An authenticated peer sends whatever it likes, as a property: it completes a real
handshake, then sends well-encrypted packets with arbitrary frames, packet numbers,
channel bindings and sizes, while an honest peer exchanges messages with the same node.
The honest messages all arrive, the node never raises nor logs an error, and what it
holds stays within its budgets.

A few dozen cases run by default; ``SHOAL_LONG_FUZZ=1`` runs thousands.
"""

from __future__ import annotations

import logging
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.connection import Connection
from shoal.core.recovery import MAX_PACKET_JUMP
from shoal.core.wire import Channel, MessageFragment, encode_frame
from shoal.sim import LinkProfile, SimNetwork
from test_wire import frames

LONG = os.environ.get("SHOAL_LONG_FUZZ") == "1"
HONEST = 12
"""Messages the honest peer and the node send each other while the attack goes on."""
CONFIG = CoreConfig(max_reassembly_bytes=256 << 10, max_reassembly_total=1 << 20,
                    channel_receive_window=1 << 20, connection_receive_window=2 << 20,
                    max_message_size=1 << 20, max_channels_per_connection=16)

# Frames that aim at what a peer can make a node hold: many channels, messages begun and
# never finished, messages beyond the credit, and everything else the codec knows.
hostile_frames = st.one_of(
    frames,
    st.builds(Channel, st.integers(0, 40), st.sampled_from(["", "chat/1", "other"])),
    st.builds(
        lambda channel, message_id, total, offset, size: MessageFragment(
            channel, message_id, max(total, offset + size), offset, bytes(size)),
        st.integers(0, 40), st.integers(0, 70_000), st.integers(0, 1 << 21),
        st.integers(0, 1 << 20), st.integers(0, 1100)),
)
packet_numbers = st.one_of(
    st.none(),  # the next one
    st.integers(0, 2**64 - 1),
    st.integers(0, MAX_PACKET_JUMP + 10),
    st.sampled_from([2**31, 2**60, 2**62 - 1, 2**62, 2**64 - 1]),
)
packets = st.tuples(packet_numbers, st.one_of(
    st.lists(hostile_frames, min_size=1, max_size=6),
    st.binary(min_size=1, max_size=1100),  # any payload at all, well encrypted
))


def _payload(content: list | bytes, room: int) -> bytes:
    if isinstance(content, bytes):
        return content[:room]
    payload = b""
    for frame in content:
        raw = encode_frame(frame)
        if len(payload) + len(raw) <= room:
            payload += raw
    return payload or b"\x01"


@settings(max_examples=2000 if LONG else 25, deadline=None, derandomize=not LONG,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(attack=st.lists(packets, min_size=1, max_size=60 if LONG else 25))
def test_an_authenticated_peer_cannot_stall_exhaust_or_confuse_a_node(attack: list) -> None:
    logged = _Records(logging.WARNING)
    logging.getLogger().addHandler(logged)
    try:
        _attack(attack, logged)
    finally:
        logging.getLogger().removeHandler(logged)


class _Records(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _attack(attack: list, logged: _Records) -> None:
    net = SimNetwork(seed=9, profile=LinkProfile(latency=0.005))
    victim = net.add_node(config=CONFIG)
    victim.endpoint.serve_channel("chat/1")
    attacker, honest = net.add_node(), net.add_node()
    connections: list[Connection] = []
    for peer in (attacker, honest):
        peer.endpoint.connect(victim.address, net.now)
        net.flush(peer)
    assert net.run(2, until=lambda: all(
        (c := p.endpoint.connection_to(victim.endpoint.identity.public_key)) is not None
        and c.confirmed for p in (attacker, honest)))
    hostile = attacker.endpoint.connection_to(victim.endpoint.identity.public_key)
    assert hostile is not None
    connections.append(hostile)

    handles = []
    for i, (number, content) in enumerate(attack):
        if i % 2 == 0 and len(handles) < 2 * HONEST:
            handles.append((honest, honest.endpoint.send_message(
                victim.peer_id, b"honest %d" % i, net.now, channel="chat/1")))
            handles.append((victim, victim.endpoint.send_message(
                honest.peer_id, b"answer %d" % i, net.now)))
            net.flush(honest)
            net.flush(victim)
        if number is not None:
            hostile.next_pn = number
        if hostile.next_pn < 2**64 and not hostile.closed:
            datagram = hostile._seal(_payload(content, hostile.max_payload), net.now,
                                     False, [])
            victim.endpoint.receive_datagram(datagram, attacker.address, net.now)
            net.flush(victim)
        net.run(0.01)
    net.run(10, until=lambda: all(_settled(node, handle) for node, handle in handles))

    assert all(isinstance(_settled(node, handle), ev.MessageDelivered)
               for node, handle in handles)
    assert not victim.endpoint.faults, victim.endpoint.faults
    assert not logged.records
    # Within the budgets CONFIG documents, whatever was sent.
    service = victim.endpoint.messages
    assert 0 <= service.stored <= CONFIG.max_reassembly_total
    assert service.unread <= 2 * CONFIG.connection_receive_window
    for connection in victim.endpoint.connections.values():
        flow = connection.state.get("messages")
        if flow is not None:
            assert flow.stored <= CONFIG.max_reassembly_bytes
            assert len(flow.inbound) <= CONFIG.max_channels_per_connection + 1
        assert connection.replay.bitmap.bit_length() <= connection.replay.size
        assert connection.queued() < 1000


def _settled(node, handle: int) -> ev.Event | None:  # type: ignore[no-untyped-def]
    return next((e for e in node.events if isinstance(e, ev.MessageDelivered | ev.MessageFailed)
                 and e.handle == handle), None)
