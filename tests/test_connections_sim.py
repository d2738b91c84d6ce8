"""Connections in virtual time: crossed dials, path validation, the stateless responder
with cookies under a flood, version agreement, channels, and plug-in services."""

from __future__ import annotations

import pytest

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.services.base import Service
from shoal.core.wire import (
    SUPPORTED_VERSIONS,
    Extension,
    PacketKind,
    decode_init,
    decode_resp,
    decode_version,
    encode_final,
    encode_hello,
    encode_init,
    encode_resp,
)
from shoal.sim import LinkProfile, SimNetwork, SimNode


def _delivered(node: SimNode, handle: int) -> bool:
    return any(isinstance(e, ev.MessageDelivered) and e.handle == handle for e in node.events)


def _failure(node: SimNode, handle: int) -> ev.MessageFailed | None:
    return next((e for e in node.events if isinstance(e, ev.MessageFailed)
                 and e.handle == handle), None)


def _pair(seed: int = 1, **config: object) -> tuple[SimNetwork, SimNode, SimNode]:
    net = SimNetwork(seed=seed, profile=LinkProfile(latency=0.02))
    a = net.add_node(config=CoreConfig(**config))
    b = net.add_node(config=CoreConfig(**config))
    return net, a, b


@pytest.mark.parametrize("seed", range(6))
def test_a_crossed_dial_ends_with_one_connection_and_loses_nothing(seed: int) -> None:
    net, a, b = _pair(seed)
    a.endpoint.connect(b.address, net.now)
    b.endpoint.connect(a.address, net.now)
    net.flush(a)
    net.flush(b)
    net.run(0.05)  # both handshakes cross on the wire
    sent_a = [a.endpoint.send_message(b.peer_id, b"a%d" % i, net.now) for i in range(20)]
    sent_b = [b.endpoint.send_message(a.peer_id, b"b%d" % i, net.now) for i in range(20)]
    net.flush(a)
    net.flush(b)
    assert net.run(10, until=lambda: all(_delivered(a, h) for h in sent_a)
                   and all(_delivered(b, h) for h in sent_b)), seed
    net.run(5)  # the superseded connection drains and closes
    assert len(a.endpoint.connections) == 1 and len(b.endpoint.connections) == 1, seed
    (ca,), (cb,) = a.endpoint.connections.values(), b.endpoint.connections.values()
    assert (ca.local_sid, ca.remote_sid) == (cb.remote_sid, cb.local_sid)
    assert [m.data for m in b.received()] == [b"a%d" % i for i in range(20)]
    assert [m.data for m in a.received()] == [b"b%d" % i for i in range(20)]
    connected = [e for e in a.events if isinstance(e, ev.PeerConnected)]
    assert len(connected) == 1
    assert not any(isinstance(e, ev.PeerDisconnected) for e in a.events + b.events)


def test_a_copied_packet_from_another_address_does_not_move_the_connection() -> None:
    net, a, b = _pair(2)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    first = a.endpoint.send_message(b.peer_id, b"hello", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, first))
    attacker = ("10.66.6.6", 6666)
    to_attacker: list[bytes] = []
    copied = {"done": False}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        if destination == attacker:
            to_attacker.append(data)
            return None
        if not copied["done"] and source == a.address and data[0] == PacketKind.DATA:
            copied["done"] = True
            # The attacker is on the path: its copy arrives first, from its own address.
            b.endpoint.receive_datagram(data, attacker, net.now)
            net.flush(b)
        return data

    net.tap = tap
    second = a.endpoint.send_message(b.peer_id, b"again", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, second))
    net.run(5)
    (connection,) = b.endpoint.connections.values()
    assert connection.address == a.address  # never moved to the unproven address
    assert to_attacker, "a challenge goes to the new address"
    assert all(len(d) <= 64 for d in to_attacker)  # small challenges only, no data
    assert len(to_attacker) <= 4
    assert [m.data for m in b.received()] == [b"hello", b"again"]


def test_the_responder_keeps_no_state_per_init_and_asks_for_cookies_when_busy() -> None:
    net = SimNetwork(seed=3, profile=LinkProfile(latency=0.01))
    target = net.add_node(config=CoreConfig(handshake_rate=50.0))
    for i in range(2000):
        source = (f"10.{100 + i // 250}.{i % 250}.1", 4000)
        init = encode_init(net.rng.randbytes(8), net.rng.randbytes(32) + encode_hello((2,), 0))
        target.endpoint.receive_datagram(init, source, net.now + i / 10_000)
    out = target.endpoint.datagrams_to_send(net.now)
    kinds = {d[0] for d, _, _ in out}
    assert kinds == {PacketKind.RESP, PacketKind.COOKIE}
    assert sum(d[0] == PacketKind.RESP for d, _, _ in out) <= 60  # the budget, then cookies
    assert max(len(d) for d, _, _ in out) < 1200  # nothing amplifies
    assert not target.endpoint.connections and not target.endpoint.handshakes.dials
    # A real peer during the flood: it gets a cookie, echoes it, and gets in.
    peer = net.add_node()
    started = net.now
    peer.endpoint.connect(target.address, net.now)
    net.flush(peer)
    assert net.run(1.0, until=lambda: any(isinstance(e, ev.PeerConnected) for e in peer.events))
    assert net.now - started < 1.0
    assert peer.endpoint.stats["cookies_echoed"] == 1


def test_versions_are_agreed_or_refused_with_the_versions_spoken() -> None:
    net = SimNetwork(seed=4)
    target = net.add_node()
    only_future = encode_init(b"s" * 8, bytes(32) + encode_hello((9,), 0), version=9)
    target.endpoint.receive_datagram(only_future, ("10.9.9.9", 1), 0.0)
    (answer, _, _), = target.endpoint.datagrams_to_send(0.0)
    assert answer[0] == PacketKind.VERSION and len(answer) < len(only_future)
    assert decode_version(answer) == (b"s" * 8, SUPPORTED_VERSIONS)
    both = encode_init(b"t" * 8, net.rng.randbytes(32) + encode_hello((9, 2), 0), version=9)
    target.endpoint.receive_datagram(both, ("10.9.9.9", 1), 0.0)
    (answer, _, _), = target.endpoint.datagrams_to_send(0.0)
    assert answer[0] == PacketKind.RESP and answer[1] == 2


def test_a_channel_the_peer_does_not_serve_fails_and_the_connection_stays() -> None:
    net, a, b = _pair(5)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    refused = a.endpoint.send_message(b.peer_id, b"?", net.now, channel="games/1")
    fine = a.endpoint.send_message(b.peer_id, b"ok", net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _failure(a, refused) is not None and _delivered(a, fine))
    assert _failure(a, refused).code == "ENOPROTOOPT"  # type: ignore[union-attr]
    assert [m.data for m in b.received()] == [b"ok"]
    assert len(a.endpoint.connections) == 1
    assert not any(isinstance(e, ev.PeerDisconnected) for e in a.events + b.events)


class _Echo(Service):
    """A protocol added from outside the core: one extension frame type."""

    name = "echo"
    frame_types = (0xE1,)

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[bytes] = []

    def on_frame(self, connection, frame, now) -> None:  # type: ignore[no-untyped-def]
        self.heard.append(frame.body)


def test_a_new_service_plugs_in_and_a_peer_without_it_skips_its_frames() -> None:
    net = SimNetwork(seed=6, profile=LinkProfile(latency=0.01))
    echo = _Echo()
    a = net.add_node()
    b = net.add_node()
    b.endpoint.add_service(echo)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    assert net.run(2, until=lambda: a.endpoint.connections and b.endpoint.connections)
    for source in (a, b):
        (connection,) = source.endpoint.connections.values()
        connection.queue_frame(Extension(0xE1, b"ping " + source.peer_id[:4].encode()))
        source.endpoint.mark(connection)
        net.flush(source)
    net.run(2)
    assert echo.heard == [b"ping " + a.peer_id[:4].encode()]
    assert a.endpoint.stats["skipped_extension_frames"] == 1
    handle = a.endpoint.send_message(b.peer_id, b"still up", net.now)
    net.flush(a)
    assert net.run(2, until=lambda: _delivered(a, handle))


def test_a_long_running_node_reassembles_a_slow_message() -> None:
    net = SimNetwork(seed=7, profile=LinkProfile(latency=0.05, loss=0.2))
    config = CoreConfig(reassembly_timeout=30.0, keepalive_interval=1.0)  # timers fire often
    a = net.add_node(config=config)
    b = net.add_node(config=config)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    net.run(40)  # well past one reassembly timeout of uptime
    payload = net.rng.randbytes(200_000)
    handle = a.endpoint.send_message(b.peer_id, payload, net.now)
    net.flush(a)
    assert net.run(30, until=lambda: _delivered(a, handle))
    assert [m.data for m in b.received()] == [payload]
    assert b.endpoint.stats["reassembly_timeouts"] == 0


def test_a_stalled_message_closes_its_connection_when_its_time_is_up() -> None:
    net = SimNetwork(seed=8, profile=LinkProfile(latency=0.05))
    a = net.add_node(config=CoreConfig(reassembly_timeout=30.0))
    b = net.add_node(config=CoreConfig(reassembly_timeout=30.0))
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    net.run(40)
    cut = {"on": False}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        return None if cut["on"] and source == a.address else data

    net.tap = tap
    a.endpoint.send_message(b.peer_id, bytes(500_000), net.now)
    net.flush(a)
    net.run(0.2)  # some parts arrive, then a's packets stop reaching b
    cut["on"] = True
    started = net.now
    assert net.run(40, until=lambda: b.endpoint.stats["reassembly_timeouts"] == 1)
    assert 29 <= net.now - started <= 31
    assert not b.endpoint.connections


def test_a_message_that_fits_a_packet_travels_whole() -> None:
    net, a, b = _pair(9)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    small = [a.endpoint.send_message(b.peer_id, bytes([i]) * 1024, net.now) for i in range(100)]
    large = a.endpoint.send_message(b.peer_id, bytes(5000), net.now)
    net.flush(a)
    assert net.run(5, until=lambda: all(_delivered(a, h) for h in [*small, large]))
    assert [m.data for m in b.received()] == [bytes([i]) * 1024 for i in range(100)] + [
        bytes(5000)]
    # Only the message larger than a packet was cut in parts and put back together.
    assert b.endpoint.stats["messages_reassembled"] == 1


@pytest.mark.parametrize("seed", range(4))
def test_a_connection_the_peer_never_got_does_not_displace_the_one_it_has(seed: int) -> None:
    net, a, b = _pair(seed)
    if a.endpoint.identity.public_key > b.endpoint.identity.public_key:
        a, b = b, a  # a has the smaller id: by the crossed-dial rule its own would win
    lost_finals = {"count": 0}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        if data[0] == PacketKind.FINAL and source == a.address:
            lost_finals["count"] += 1  # b never learns of the connection a started
            return None
        return data

    net.tap = tap
    a.endpoint.connect(b.address, net.now)
    b.endpoint.connect(a.address, net.now)
    net.flush(a)
    net.flush(b)
    handles = [a.endpoint.send_message(b.peer_id, b"m%d" % i, net.now) for i in range(5)]
    net.flush(a)
    assert net.run(10, until=lambda: all(_delivered(a, h) for h in handles))
    assert [m.data for m in b.received()] == [b"m%d" % i for i in range(5)]
    net.run(10)
    assert lost_finals["count"] >= 1
    (ca,), (cb,) = a.endpoint.connections.values(), b.endpoint.connections.values()
    assert (ca.local_sid, ca.remote_sid) == (cb.remote_sid, cb.local_sid)
    later = a.endpoint.send_message(b.peer_id, b"later", net.now)
    net.flush(a)
    assert net.run(2, until=lambda: _delivered(a, later))


def test_forged_resp_and_final_from_on_path_change_nothing() -> None:
    """An attacker on the path sees the clear-text session ids of INIT and RESP, and races
    a forged RESP to the initiator and a forged FINAL (from the initiator's address) to
    the responder. Neither changes any state: the first message arrives as fast as ever."""
    net, a, b = _pair(11)
    forged: dict[str, int] = {"resp": 0, "final": 0}
    seen: dict[str, bytes] = {}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        if data[0] == PacketKind.INIT and destination == b.address:
            seen["init"] = decode_init(data).noise_message
        if data[0] == PacketKind.RESP and destination == a.address and not forged["resp"]:
            version, receiver, sender, noise = decode_resp(data)
            forged["resp"] = forged["final"] = 1
            a.endpoint.receive_datagram(
                encode_resp(receiver, sender, bytes(len(noise)), version), source, net.now)
            b.endpoint.receive_datagram(
                encode_final(sender, receiver, seen["init"], net.rng.randbytes(64)),
                destination, net.now)
        return data

    net.tap = tap
    started = net.now
    handle = a.endpoint.send_message(b.peer_id, b"first", net.now)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    assert net.run(5, until=lambda: _delivered(a, handle))
    assert forged == {"resp": 1, "final": 1}
    # INIT, RESP, FINAL with the message, ACK: two round trips of 40 ms, no retry.
    assert net.now - started < 0.1
    assert b.endpoint.stats["dropped_handshake"] >= 1
    assert [m.data for m in b.received()] == [b"first"]


def _restart(net: SimNetwork, node: SimNode, address: tuple[str, int]) -> SimNode:
    """``node`` dies without a word and its key starts again at ``address``."""
    node.online = False
    del net.nodes[node.address]
    net._bound.pop(node.address)
    return net.add_node(identity=node.endpoint.identity, address=address)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dialer", ["restarted", "sender", "nobody"])
def test_a_peer_restarted_mid_message_is_replaced_at_once_and_gets_the_message(
        seed: int, dialer: str) -> None:
    """The restarted run's handshake names another incarnation: proof that the earlier
    connection is dead, even within the crossed-dial window, whoever dials. If nobody
    does (the peer came back at the same address), the sender's packets go unanswered
    and a handshake at that address, after two probe timeouts, finds the new run."""
    net, a, b = _pair(seed)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    net.run(0.2)
    handle = a.endpoint.send_message(b.peer_id, bytes(range(256)) * 4096, net.now)  # 1 MiB
    net.flush(a)
    net.run(0.1)  # part of it is on its way when b dies
    assert not _delivered(a, handle)
    b2 = _restart(net, b, b.address if dialer == "nobody" else ("10.0.9.9", 7000))
    if dialer == "restarted":
        b2.endpoint.connect(a.address, net.now)
        net.flush(b2)
    elif dialer == "sender":
        a.endpoint.connect(b2.address, net.now)
        net.flush(a)
    restarted_at = net.now
    assert net.run(60, until=lambda: _delivered(a, handle) or _failure(a, handle) is not None)
    assert _delivered(a, handle), _failure(a, handle)
    assert net.now - restarted_at < 3.0
    assert [m.data for m in b2.received()] == [bytes(range(256)) * 4096]
    (connection,) = a.endpoint.connections.values()
    assert connection.address == b2.address
    assert a.endpoint.stats["connections_replaced"] == 1
    # The application hears that the peer's earlier run is gone, then that it is back.
    told = [e for e in a.events if isinstance(e, ev.PeerDisconnected | ev.PeerConnected)]
    assert [type(e) for e in told] == [ev.PeerConnected, ev.PeerDisconnected, ev.PeerConnected]
    assert told[1].reason == "the peer restarted"


def test_a_peer_silent_for_a_while_but_not_restarted_keeps_its_connection() -> None:
    """The handshake that checks a silent peer for a restart is answered by the same run
    of the peer: no second connection is made, and the transfer goes on once it speaks."""
    net, a, b = _pair(4)
    a.endpoint.connect(b.address, net.now)
    net.flush(a)
    net.run(0.2)
    handle = a.endpoint.send_message(b.peer_id, bytes(300_000), net.now)
    net.flush(a)
    net.run(0.05)
    muted = {"until": net.now + 2.0}

    def tap(data: bytes, source: tuple, destination: tuple) -> bytes | None:
        if source == b.address and data[0] == PacketKind.DATA and net.now < muted["until"]:
            return None  # b's packets are lost for two seconds; its handshakes are not
        return data

    net.tap = tap
    assert net.run(30, until=lambda: _delivered(a, handle))
    assert a.endpoint.stats["restart_checks"] >= 1
    assert a.endpoint.stats["dials_to_a_held_peer"] >= 1
    assert a.endpoint.stats["connections_replaced"] == 0
    assert len(a.endpoint.connections) == 1 and len(b.endpoint.connections) == 1
    assert [len(m.data) for m in b.received()] == [300_000]


def test_the_proof_names_the_run_of_the_node_and_a_cut_one_is_refused() -> None:
    from shoal.core.handshake import CAP_INCARNATION, check_proof, make_proof, proof_length
    from shoal.errors import RemoteProtocolError
    from shoal.identity import Identity

    identity = Identity(bytes(range(32)))
    proof = make_proof(identity, False, 2, 0, b"run-one!")
    assert proof_length(proof + b"\x01") == len(proof)  # what follows is not the proof's
    parsed = check_proof(proof, identity.static_public)
    assert parsed.incarnation == b"run-one!" and parsed.capabilities & CAP_INCARNATION
    assert check_proof(make_proof(identity, False, 2, 0), identity.static_public
                       ).incarnation == b""
    for cut in range(len(proof) - 8, len(proof)):
        with pytest.raises(RemoteProtocolError):
            check_proof(proof[:cut], identity.static_public)
    # Each start of a node with the same key is another run; its connections all say so.
    net = SimNetwork(seed=5)
    first = net.add_node(identity=identity)
    again = net.add_node(identity=identity, address=("10.0.9.9", 7000))
    peer = net.add_node()
    runs = []
    for node in (first, again):  # as if one stopped and the other started
        peer.endpoint.connect(node.address, net.now)
        net.flush(peer)
        net.run(2)
        (connection,) = peer.endpoint.connections.values()
        runs.append(connection.peer_incarnation)
    assert runs == [first.endpoint.handshakes.incarnation, again.endpoint.handshakes.incarnation]
    assert runs[0] != runs[1] and peer.endpoint.stats["peer_restarts"] == 1
