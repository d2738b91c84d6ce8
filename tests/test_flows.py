"""A connection's flows: round-robin under the congestion window, told of acks and losses."""

from __future__ import annotations

from shoal.core.config import CoreConfig
from shoal.core.connection import Connection
from shoal.core.flows import FlowScheduler
from shoal.core.services.base import Service
from shoal.core.wire import PacketKind, Ping, decode_frames
from shoal.sim import LinkProfile, SimNetwork

KEY = bytes(32)


def _connection() -> Connection:
    return Connection(local_sid=b"l" * 8, remote_sid=b"r" * 8, peer=b"p" * 32,
                      peer_introducer=False, initiator=True, send_key=KEY, recv_key=KEY,
                      address=("127.0.0.1", 1), now=0.0, config=CoreConfig(),
                      random_bytes=lambda n: bytes(n))


class Bulk:
    """A flow with ``frames`` PING-sized frames to send, one per fill call at most."""

    def __init__(self, name: bytes, frames: int) -> None:
        self.name, self.left = name, frames
        self.acked: list[object] = []
        self.lost: list[object] = []

    def has_data(self) -> bool:
        return self.left > 0

    def fill(self, parts: list[bytes], budget: int) -> tuple[int, object]:
        frame = bytes((0xE5, len(self.name))) + self.name
        if len(frame) > budget:
            return budget, None
        self.left -= 1
        parts.append(frame)
        return budget - len(frame), self.name

    def on_acked(self, record: object) -> None:
        self.acked.append(record)

    def on_lost(self, record: object) -> None:
        self.lost.append(record)
        self.left += 1


def _opened(datagram: bytes, connection: Connection) -> list[object]:
    from shoal.core.connection import _CIPHERS
    _, recv = _CIPHERS.make(connection)
    payload = recv.decrypt(b"\x00" * 4 + datagram[9:17][::-1], datagram[17:], datagram[:17])
    return list(decode_frames(payload))


def test_flows_take_turns_and_stay_within_the_window() -> None:
    connection = _connection()
    a, b = Bulk(b"a", 10_000), Bulk(b"b", 3)
    connection.add_flow(a)
    connection.add_flow(b)
    connection.queue_frame(Ping(), reliable=False)
    out = connection.datagrams(0.0)
    # Each packet holds frames of both flows while both have data, and the window
    # (not the 10,000 frames) bounds what leaves.
    assert out and connection.cc.bytes_in_flight <= connection.cc.window
    first = _opened(out[0][0], connection)
    bodies = [f.body for f in first if hasattr(f, "body")]
    assert b"b" in bodies and b"a" in bodies
    assert b.left == 0 and a.left > 0
    # A reliable control frame waits for room in the window like any flow; an
    # unreliable one does not.
    connection.queue_frame(Ping())
    assert connection.datagrams(0.0) == []
    connection.queue_frame(Ping(), reliable=False)
    assert len(connection.datagrams(0.0)) == 1


def test_the_scheduler_starts_each_packet_with_the_next_flow() -> None:
    flows = [Bulk(b"x", 5), Bulk(b"y", 5)]
    scheduler = FlowScheduler()
    for flow in flows:
        scheduler.add(flow)
    firsts = []
    for _ in range(4):
        parts: list[bytes] = []
        sent: list = []
        scheduler.fill(parts, 30, sent)
        assert len(sent) == 2  # both have data: both write into the packet
        firsts.append(sent[0][1])
    assert firsts == [b"x", b"y", b"x", b"y"]


class Notified(Service):
    name = "notified"
    frame_types = (0xE7,)

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.received: list[bytes] = []

    def on_frame_acked(self, connection: Connection, frame: bytes) -> None:
        self.events.append(("acked", frame))

    def on_frame_lost(self, connection: Connection, frame: bytes) -> None:
        self.events.append(("lost", frame))

    def on_frame(self, connection, frame, now) -> None:  # type: ignore[no-untyped-def]
        self.received.append(frame.body)


def test_a_service_hears_which_of_its_frames_were_acknowledged_or_lost() -> None:
    net = SimNetwork(seed=4, profile=LinkProfile(latency=0.01))
    sender, receiver = Notified(), Notified()
    a, b = net.add_node(services=[sender]), net.add_node(services=[receiver])
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    peer = b.endpoint.identity.public_key
    assert net.run(2, until=lambda: (c := a.endpoint.connection_to(peer)) is not None
                   and c.confirmed)
    dropping = [True]

    def tap(data: bytes, source, destination):  # type: ignore[no-untyped-def]
        if source == a.address and data[0] == PacketKind.DATA and dropping[0]:
            dropping[0] = False
            return None  # the packet carrying the frame is lost once
        return data

    net.tap = tap
    sender.ctx.send_to(peer, b"\xe7\x02hi", notify=True)
    net.flush(a)
    assert net.run(5, until=lambda: ("acked", b"\xe7\x02hi") in sender.events)
    assert sender.events[0] == ("lost", b"\xe7\x02hi")
    assert sender.events.count(("acked", b"\xe7\x02hi")) == 1
    assert receiver.received == [b"hi"]
