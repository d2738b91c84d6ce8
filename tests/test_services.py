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
from shoal.errors import LocalProtocolError
from shoal.identity import Identity

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
