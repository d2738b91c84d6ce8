"""Batched UDP I/O on loopback: GSO sends, GRO receives, the fallbacks when the kernel or
the socket refuses them, and input that does not fit."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import sys
import time

import pytest

import shoal
from shoal.aio.udp import (
    GSO_MAX_SEGMENTS,
    IP_MTU_DISCOVER,
    IPV6_MTU_DISCOVER,
    PMTUDISC_PROBE,
    RECV_SIZE,
    UDP_GRO,
    DatagramSocket,
    IoStats,
    open_udp_socket,
    split_segments,
)
from shoal.identity import Identity

SO_NO_CHECK = 11
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="UDP GSO/GRO are Linux's")


def _payloads(count: int, seed: int = 7) -> list[bytes]:
    """Mostly full-size datagrams with shorter ones between, each with its index."""
    rnd = random.Random(seed)
    out = []
    for index in range(count):
        size = rnd.choice((1232, 1232, 1232, 1232, 1232, 60, 700, 1231))
        out.append(index.to_bytes(4, "big") + rnd.randbytes(size - 4))
    return out


def _collect(receiver: DatagramSocket, expected: int) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < expected and time.monotonic() < deadline:
        batches = receiver.receive()
        if not batches:
            time.sleep(0.005)
        for datagrams, _source in batches:
            got.extend(datagrams)
    return got


def _pair(*, sender_offload: bool = True, receiver_offload: bool = True
          ) -> tuple[DatagramSocket, DatagramSocket]:
    sender = DatagramSocket(open_udp_socket("127.0.0.1", 0), offload=sender_offload)
    receiver = DatagramSocket(open_udp_socket("127.0.0.1", 0), offload=receiver_offload)
    return sender, receiver


def _exchange(sender: DatagramSocket, receiver: DatagramSocket, payloads: list[bytes]
              ) -> list[bytes]:
    destination = receiver.sock.getsockname()
    # In slices, so that the receive buffer (4 MiB asked, maybe less granted) never fills.
    got: list[bytes] = []
    for start in range(0, len(payloads), 100):
        chunk = payloads[start:start + 100]
        sender.send([(data, destination) for data in chunk])
        got.extend(_collect(receiver, len(chunk)))
    return got


def test_gso_sends_and_gro_receives_deliver_identical_datagrams_in_order() -> None:
    sender, receiver = _pair()
    try:
        assert sender.gso and receiver.gro
        payloads = _payloads(600)
        assert _exchange(sender, receiver, payloads) == payloads
        out, into = sender.stats, receiver.stats
        assert out.tx_gso_batches > 0 and out.tx_syscalls < len(payloads) // 2
        assert out.tx_datagrams == into.rx_datagrams == len(payloads)
        assert out.tx_bytes == into.rx_bytes == sum(map(len, payloads))
        assert into.rx_gro_buffers > 0 and into.rx_syscalls < len(payloads) // 2
        assert into.rx_truncated == into.rx_oversize == out.tx_dropped == 0
    finally:
        sender.close()
        receiver.close()


def test_a_receiver_without_gro_gets_a_gso_run_as_single_datagrams() -> None:
    sender, receiver = _pair(receiver_offload=False)
    try:
        payloads = _payloads(300, seed=3)
        assert _exchange(sender, receiver, payloads) == payloads
        assert sender.stats.tx_gso_batches > 0
        assert receiver.stats.rx_gro_buffers == 0
        assert receiver.stats.rx_syscalls == len(payloads)
    finally:
        sender.close()
        receiver.close()


def test_a_socket_that_refuses_gso_falls_back_to_one_datagram_per_call() -> None:
    sender, receiver = _pair()
    try:
        # The kernel refuses GSO (EINVAL) on a socket that sends without UDP checksums.
        sender.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        payloads = _payloads(300, seed=5)
        assert _exchange(sender, receiver, payloads) == payloads
        assert sender.stats.gso_fallbacks == 1 and not sender.gso
        assert sender.stats.tx_gso_batches == 0
        assert sender.stats.tx_syscalls == len(payloads)
        assert sender.stats.tx_dropped == 0
    finally:
        sender.close()
        receiver.close()


class _NoGroSocket(socket.socket):
    """A socket whose kernel knows no UDP_GRO."""

    def setsockopt(self, level: int, option: int, *value: object) -> None:  # type: ignore[override]
        if option == UDP_GRO:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        super().setsockopt(level, option, *value)  # type: ignore[arg-type]


def test_a_kernel_without_gro_is_counted_and_receives_one_datagram_per_call() -> None:
    raw = _NoGroSocket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    receiver = DatagramSocket(raw)
    sender = DatagramSocket(open_udp_socket("127.0.0.1", 0))
    try:
        assert not receiver.gro and receiver.stats.gro_fallbacks == 1
        payloads = _payloads(200, seed=9)
        assert _exchange(sender, receiver, payloads) == payloads
        assert receiver.stats.rx_syscalls == len(payloads)
    finally:
        sender.close()
        receiver.close()


def test_the_environment_switch_turns_offload_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_UDP_OFFLOAD", "0")
    sender = DatagramSocket(open_udp_socket("127.0.0.1", 0))
    receiver = DatagramSocket(open_udp_socket("127.0.0.1", 0))
    try:
        assert not sender.gso and not receiver.gro
        assert sender.stats.gso_fallbacks == receiver.stats.gro_fallbacks == 0
        payloads = _payloads(150, seed=11)
        assert _exchange(sender, receiver, payloads) == payloads
        assert sender.stats.tx_gso_batches == 0
    finally:
        sender.close()
        receiver.close()


def test_a_gro_buffer_is_split_at_the_segment_size() -> None:
    parts = [bytes([n]) * 1232 for n in range(5)] + [b"\xff" * 17]
    buffer = bytearray(65536)
    joined = b"".join(parts)
    buffer[:len(joined)] = joined
    buffer[len(joined):len(joined) + 100] = b"\xee" * 100  # left over from an earlier read
    view = memoryview(buffer)
    assert split_segments(view, len(joined), 1232) == parts
    assert split_segments(view, 1232 * 5, 1232) == parts[:5]
    assert split_segments(view, 900, 1232) == [parts[0][:900]]
    assert split_segments(view, 900, 0) == [parts[0][:900]]


def test_truncated_and_oversize_datagrams_are_counted_and_dropped() -> None:
    plain = DatagramSocket(open_udp_socket("127.0.0.1", 0), offload=False)
    gro = DatagramSocket(open_udp_socket("127.0.0.1", 0))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for receiver in (plain, gro):
            destination = receiver.sock.getsockname()
            probe.sendto(os.urandom(RECV_SIZE + 500), destination)
            probe.sendto(b"after", destination)
            assert _collect(receiver, 1) == [b"after"]
        assert plain.stats.rx_truncated == 1 and plain.stats.rx_datagrams == 1
        assert gro.stats.rx_oversize == 1 and gro.stats.rx_datagrams == 1
        # A GSO run whose segments exceed what is taken in: every segment is dropped.
        sender = DatagramSocket(open_udp_socket("127.0.0.1", 0))
        try:
            big = [(bytes([n]) * (RECV_SIZE + 8), gro.sock.getsockname()) for n in range(3)]
            sender.send(big)
            sender.send([(b"tail", gro.sock.getsockname())])
            assert _collect(gro, 1) == [b"tail"]
            assert sender.stats.tx_gso_batches == 1
            assert gro.stats.rx_oversize == 1 + 3
        finally:
            sender.close()
    finally:
        plain.close()
        gro.close()
        probe.close()


def test_a_run_is_split_at_the_kernels_segment_limit() -> None:
    sender, receiver = _pair()
    try:
        payloads = [n.to_bytes(2, "big") * 100 for n in range(GSO_MAX_SEGMENTS * 2 + 5)]
        assert _exchange(sender, receiver, payloads) == payloads
        # 100 a slice: each slice makes two runs (64 + 36) at most.
        assert sender.stats.tx_gso_batches >= 3
        assert sender.stats.tx_gso_segments == len(payloads)
    finally:
        sender.close()
        receiver.close()


class _FullBufferSocket(socket.socket):
    """A socket whose send buffer is full for its first ``full`` sends."""

    full = 2

    def _maybe_full(self) -> None:
        if self.full > 0:
            self.full -= 1
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    def sendto(self, *args: object) -> int:  # type: ignore[override]
        self._maybe_full()
        return super().sendto(*args)  # type: ignore[call-overload,no-any-return]

    def sendmsg(self, *args: object) -> int:  # type: ignore[override]
        self._maybe_full()
        return super().sendmsg(*args)  # type: ignore[arg-type,no-any-return]


async def test_datagrams_wait_for_a_full_send_buffer_in_order() -> None:
    raw = _FullBufferSocket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    sender = DatagramSocket(raw, loop=asyncio.get_running_loop())
    receiver = DatagramSocket(open_udp_socket("127.0.0.1", 0))
    try:
        destination = receiver.sock.getsockname()
        payloads = _payloads(40, seed=13)
        sender.send([(data, destination) for data in payloads[:20]])
        sender.send([(data, destination) for data in payloads[20:]])  # behind the backlog
        for _ in range(100):
            if not sender._backlog:
                break
            await asyncio.sleep(0.01)
        assert _collect(receiver, len(payloads)) == payloads
        assert sender.stats.tx_blocked == 2 and sender.stats.tx_dropped == 0
    finally:
        sender.close()
        receiver.close()


@pytest.mark.parametrize("offload", ["1", "0"])
async def test_nodes_exchange_large_messages_and_count_their_io(
        monkeypatch: pytest.MonkeyPatch, offload: str) -> None:
    monkeypatch.setenv("SHOAL_UDP_OFFLOAD", offload)
    rnd = random.Random(offload)
    messages = [rnd.randbytes(size) for size in (300_000, 1, 5000, 200_000)]
    async with shoal.Node(Identity(bytes(range(32))), listen="127.0.0.1:0",
                          lan_discovery=False) as a, \
            shoal.Node(Identity(bytes(range(1, 33))), listen="127.0.0.1:0",
                       lan_discovery=False) as b:
        # A datagram longer than any Shoal sends is dropped at the socket, counted.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(os.urandom(RECV_SIZE + 1000), b.address)
        peer = await a.connect(b.address)
        for data in messages:
            await a.send(peer, data, timeout=10)
        received = [(await b.receive(timeout=10)).data for _ in messages]
        assert received == messages
        out, into = a.io_stats, b.io_stats
        assert out["tx_datagrams"] == a.stats["tx_datagrams"]
        assert into["rx_oversize"] + into["rx_truncated"] == 1
        assert into["rx_datagrams"] == b.stats["rx_datagrams"]
        if offload == "1":
            assert out["tx_gso_batches"] > 0 and into["rx_gro_buffers"] > 0
        else:
            assert out["tx_gso_batches"] == into["rx_gro_buffers"] == 0
            assert out["tx_syscalls"] == out["tx_datagrams"]


def test_io_stats_names_every_counter() -> None:
    assert set(IoStats().as_dict()) >= {
        "rx_datagrams", "rx_bytes", "rx_syscalls", "rx_gro_buffers", "rx_gro_segments",
        "tx_datagrams", "tx_bytes", "tx_syscalls", "tx_gso_batches", "tx_gso_segments",
        "gso_fallbacks", "gro_fallbacks", "rx_truncated", "rx_oversize", "tx_dropped"}


def test_sockets_send_unfragmented_and_leave_the_size_to_the_connections_search() -> None:
    """IP_PMTUDISC_PROBE: Don't Fragment set, and no path MTU from ICMP imposed on the
    size probes of ``core.pmtud``; for IPv4, and for both families of a dual-stack socket."""
    with open_udp_socket("127.0.0.1", 0) as v4:
        assert v4.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == PMTUDISC_PROBE
    if socket.has_ipv6:
        with open_udp_socket("::", 0) as dual:
            assert dual.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == PMTUDISC_PROBE
            assert dual.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == PMTUDISC_PROBE

    async def node_socket() -> int:
        async with shoal.Node(Identity.generate(), listen="127.0.0.1:0") as node:
            sock = node._driver.sock  # type: ignore[union-attr]
            return sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER)

    assert asyncio.run(node_socket()) == PMTUDISC_PROBE
