"""Services plugged in by the application: ``Node(services=...)``, in virtual time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

import shoal
from shoal import sim
from shoal.core.connection import Connection
from shoal.core.endpoint import Endpoint
from shoal.core.services.context import ServiceContext
from shoal.core.wire import Extension, Frame
from shoal.errors import LocalProtocolError, RemoteProtocolError
from shoal.identity import Identity
from shoal.sim import SimNetwork

PING, PONG = 0xE1, 0xE2


class Pinger(shoal.Service):
    """Owns two extension frame types; a ping unanswered by its deadline times out."""

    name = "pinger"
    frame_types = (PING, PONG)

    def __init__(self) -> None:
        self.waiting: dict[bytes, bytes] = {}  # token -> peer

    def call(self, now: float, peer_id: str, token: bytes) -> bool:
        peer = bytes.fromhex(peer_id)
        if not self.ctx.send_to(peer, Extension(PING, token)):
            return False
        self.waiting[token] = peer
        self.set_timer(now + self.ctx.options.get("timeout", 5.0), token)
        return True

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        assert isinstance(frame, Extension)
        if frame.type == PING:
            self.ctx.send(connection, Extension(PONG, frame.body))
        elif self.waiting.pop(frame.body, None) is not None:
            self.set_timer(None, frame.body)
            self.ctx.event("pong", frame.body, peer=connection.peer)

    def on_timer(self, now: float, key: object = None) -> None:
        peer = self.waiting.pop(key, None)  # type: ignore[arg-type]
        if peer is not None:
            self.ctx.event("timeout", key, peer=peer)


class Counter(shoal.Service):
    """Needs the pinger, by name."""

    name = "counter"
    requires = ("pinger",)

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.pinger: Pinger = services["pinger"]

    def call(self, now: float) -> int:
        return len(self.pinger.waiting)


def test_a_service_added_to_a_node_owns_frames_timers_and_events() -> None:
    async def main(net: sim.VirtualNetwork) -> list[tuple[str, Any]]:
        options = {"config": shoal.CoreConfig(services={"pinger": {"timeout": 2.0}})}
        async with net.node(services=[Pinger(), Counter()], **options) as alice, \
                net.node(services=[Pinger()]) as bob, net.node() as carol:
            events = alice.subscribe("pinger")
            await alice.connect(bob.address)
            await alice.connect(carol.address)
            seen = []
            assert alice.call("pinger", bob.peer_id, b"one")
            assert alice.call("counter") == 1
            event = await events.get(timeout=5)
            seen.append((event.kind, event.data))
            assert event.peer_id == bob.peer_id and alice.call("counter") == 0
            # Carol has no such service: she skips the unknown extension frame, and the
            # ping times out on alice's timer.
            assert alice.call("pinger", carol.peer_id, b"two")
            event = await events.get(timeout=5)
            seen.append((event.kind, event.data))
            assert carol.stats["skipped_extension_frames"] == 1
            assert not alice.call("pinger", "ab" * 32, b"three")  # not connected
            with pytest.raises(LocalProtocolError) as missing:
                alice.call("nobody")
            assert missing.value.code == "ENOENT"
            return seen

    assert sim.run(main, seed=3) == [("pong", b"one"), ("timeout", b"two")]


def test_services_are_checked_when_plugged_in() -> None:
    identity = Identity(b"\x01" * 32)
    with pytest.raises(LocalProtocolError, match="requires 'pinger'"):
        Endpoint(identity, random_bytes=bytes, services=[Counter()])
    with pytest.raises(LocalProtocolError, match="already owned"):
        Endpoint(identity, random_bytes=bytes, services=[Pinger(), _Thief()])
    with pytest.raises(LocalProtocolError, match="plugged in already"):
        Endpoint(identity, random_bytes=bytes, services=[Pinger(), Pinger()])
    endpoint = Endpoint(identity, random_bytes=bytes, services=[Pinger()])
    with pytest.raises(LocalProtocolError, match="takes no calls"):
        endpoint.call("relay", 0.0)


class _Thief(shoal.Service):
    name = "thief"
    frame_types = (PONG,)


COUNT = 0x5A  # outside the extension range: the service brings its own decoder


def _decode_count(payload: bytes, pos: int) -> tuple[tuple[str, int], int]:
    if pos >= len(payload):
        raise RemoteProtocolError("COUNT frame cut short")
    if payload[pos] > 100:
        raise RemoteProtocolError("COUNT beyond 100")
    return ("count", payload[pos]), pos + 1


class Tally(shoal.Service):
    """Reads one frame type with its own decoder, and a run of another in place."""

    name = "tally"
    frame_types = (COUNT, 0xE9)
    frame_decoders = {COUNT: _decode_count}

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.bytes_in_place = 0

    def frame_reader(self, code: int):  # type: ignore[no-untyped-def]
        if code != 0xE9:
            return None

        def read(connection: Connection, payload: bytes, pos: int, now: float) -> int:
            size = payload[pos]
            self.bytes_in_place += size
            return pos + 1 + size

        return read

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        self.counts.append(frame[1])  # type: ignore[index]


def test_frame_types_reach_their_service_through_the_registry() -> None:
    net = SimNetwork(seed=5)
    tally = Tally()
    a, b = net.add_node(services=[Tally()]), net.add_node(services=[tally])
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    peer = b.endpoint.identity.public_key
    assert net.run(2, until=lambda: a.endpoint.connection_to(peer) is not None)
    connection = a.endpoint.connection_to(peer)
    assert connection is not None
    connection.queue_frame(bytes((COUNT, 7)) + b"\xe9\x03abc" + bytes((COUNT, 9)))
    net.flush(a)
    assert net.run(2, until=lambda: len(tally.counts) == 2)
    assert tally.counts == [7, 9] and tally.bytes_in_place == 3
    # A peer breaking the frame's rule is closed with a protocol error, nothing more.
    connection.queue_frame(bytes((COUNT, 200)))
    net.flush(a)
    assert net.run(2, until=lambda: b.endpoint.connection_to(
        a.endpoint.identity.public_key) is None)
    assert tally.counts == [7, 9] and not b.endpoint.faults
    assert net.run(2, until=lambda: not a.endpoint.connections)
    assert "protocol error: COUNT beyond 100" in str(a.events[-1])


def test_a_frame_type_without_a_codec_is_refused_when_plugged_in() -> None:
    class Codeless(shoal.Service):
        name = "codeless"
        frame_types = (0x5B,)

    with pytest.raises(LocalProtocolError, match="no codec"):
        Endpoint(Identity(b"\x01" * 32), random_bytes=bytes, services=[Codeless()])


def test_a_service_added_later_needs_what_it_requires_first() -> None:
    endpoint = Endpoint(Identity(b"\x01" * 32), random_bytes=bytes)
    with pytest.raises(LocalProtocolError, match="requires 'pinger'"):
        endpoint.add_service(Counter())
    assert "counter" not in endpoint.services  # nothing of it was plugged in
    endpoint.add_service(Pinger())
    endpoint.add_service(Counter())
    assert endpoint.call("counter", 0.0) == 0


class Watcher(shoal.Service):
    """Records what the endpoint tells services about a peer's connections."""

    name = "watcher"

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes, bytes | None]] = []

    def on_connection_up(self, connection: Connection, now: float) -> None:
        self.log.append(("up", connection.local_sid, None))

    def on_connection_replaced(self, old: Connection, new: Connection, *, hold: bool) -> None:
        self.log.append(("replaced", old.local_sid, new.local_sid))

    def on_connection_draining(self, connection: Connection) -> None:
        if ("draining", connection.local_sid, None) not in self.log:
            self.log.append(("draining", connection.local_sid, None))

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        self.log.append(("down", connection.local_sid, None))


def test_a_service_hears_a_crossed_dial_move_the_peers_traffic() -> None:
    for seed in range(4):
        net = SimNetwork(seed=seed)
        watchers = Watcher(), Watcher()
        a, b = (net.add_node(services=[w]) for w in watchers)
        a.endpoint.connect(b.address, net.now)
        b.endpoint.connect(a.address, net.now)
        net.flush(a)
        net.flush(b)
        net.run(10)
        (kept,) = a.endpoint.connections.values()
        log = watchers[0].log
        replaced = [entry for entry in log if entry[0] == "replaced"]
        if not replaced:  # this side's first connection won: nothing moved here
            continue
        (_, old, new), = replaced
        assert new == kept.local_sid and ("draining", old, None) in log
        assert log.index(("draining", old, None)) < log.index(("down", old, None))
        break
    else:
        raise AssertionError("no seed made this side hand its traffic over")
