"""Streams without I/O: the frame codec, the state tables, reassembly, flow control, and
two stream managers talking over a lossy, reordering, duplicating link."""

from __future__ import annotations

import contextlib
import itertools
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.streams import (
    DataBlocked,
    Datagram,
    MaxData,
    MaxStreamData,
    MaxStreams,
    RecvState,
    ResetStream,
    SendState,
    StopSending,
    StreamClosed,
    StreamConfig,
    StreamDataBlocked,
    StreamFrame,
    StreamManager,
    StreamOpened,
    StreamReset,
    StreamsAvailable,
    StreamsBlocked,
    StreamStopped,
    StreamWritable,
)
from shoal.core.streams import frames as F
from shoal.core.streams.credit import RecvLimit, SendLimit
from shoal.core.streams.datagrams import DatagramQueue
from shoal.core.streams.flow import FrameFlow
from shoal.core.streams.manager import INITIAL_DATA, INITIAL_MAX_STREAMS, INITIAL_STREAM_DATA
from shoal.core.streams.ranges import ByteRanges
from shoal.core.streams.recv import RecvStream
from shoal.core.streams.send import SendStream
from shoal.core.streams.state import (
    RECV_TABLE,
    SEND_TABLE,
    RecvEvent,
    SendEvent,
    next_recv_state,
    next_send_state,
)
from shoal.core.wire import DECODERS, FrameType
from shoal.errors import LocalProtocolError, RemoteProtocolError

ids = st.integers(0, 2**62 - 1)
small = st.integers(0, 2**40)

stream_frames = st.one_of(
    st.builds(StreamFrame, ids, small, st.binary(max_size=200), st.booleans()),
    st.builds(ResetStream, ids, ids, ids),
    st.builds(StopSending, ids, ids),
    st.builds(MaxStreamData, ids, ids),
    st.builds(MaxData, ids),
    st.builds(MaxStreams, st.integers(0, 2**60)),
    st.builds(DataBlocked, ids),
    st.builds(StreamDataBlocked, ids, ids),
    st.builds(StreamsBlocked, st.integers(0, 2**60)),
    st.builds(Datagram, ids, st.binary(max_size=200)),
)


# ----------------------------------------------------------------------------- codec


@given(st.lists(stream_frames, max_size=8))
def test_frames_round_trip(frames: list) -> None:
    payload = b"".join(F.encode(f) for f in frames)
    assert sum(F.encoded_size(f) for f in frames) == len(payload)
    decoded = F.decode(payload)
    assert [type(f) for f in decoded] == [type(f) for f in frames]
    for got, want in zip(decoded, frames, strict=True):
        if isinstance(want, StreamFrame | Datagram):
            assert bytes(got.data) == want.data
            assert got == type(want)(*[bytes(v) if isinstance(v, memoryview) else v
                                       for v in (getattr(got, n) for n in got.__slots__)])
        else:
            assert got == want


@given(st.binary(max_size=64), st.sampled_from(sorted(F.DECODERS)))
def test_decoders_raise_only_remote_protocol_errors(body: bytes, kind: int) -> None:
    with contextlib.suppress(RemoteProtocolError):
        F.decode(bytes((kind,)) + body)


def test_frame_types_do_not_collide_with_the_wire_codec() -> None:
    assert not set(F.DECODERS) & set(DECODERS)
    assert set(F.DECODERS) == {t for t in FrameType if 0x40 <= t <= 0x4A}


def test_a_stream_frame_past_the_largest_offset_is_refused() -> None:
    raw = F.stream_header(0, 2**62 - 2, 4, False) + b"abcd"
    with pytest.raises(RemoteProtocolError):
        F.decode(raw)
    with pytest.raises(RemoteProtocolError):
        F.decode(F.stream_header(0, 0, 10, False) + b"short")
    with pytest.raises(RemoteProtocolError):
        F.decode(b"\x02")  # an ACK is not a stream frame


def test_a_stream_frame_from_a_memoryview_is_a_view() -> None:
    payload = memoryview(F.encode(StreamFrame(4, 10, b"hello")))
    (frame,) = F.decode(payload)
    assert type(frame.data) is memoryview and frame.data.obj is payload.obj


# ----------------------------------------------------------------------------- state tables


@given(st.lists(st.sampled_from(list(SendEvent)), max_size=20))
def test_the_send_table_is_closed(events: list[SendEvent]) -> None:
    state = SendState.READY
    for event in events:
        try:
            state = next_send_state(state, event)
        except LocalProtocolError:
            assert event not in SEND_TABLE[state]
        assert state in SEND_TABLE


@given(st.lists(st.sampled_from(list(RecvEvent)), max_size=20))
def test_the_receive_table_is_closed(events: list[RecvEvent]) -> None:
    state = RecvState.RECV
    for event in events:
        try:
            state = next_recv_state(state, event)
        except LocalProtocolError:
            assert event not in RECV_TABLE[state]
        assert state in RECV_TABLE


def test_terminal_states_only_absorb_late_frames() -> None:
    assert SEND_TABLE[SendState.DATA_RECVD] == {} == SEND_TABLE[SendState.RESET_RECVD]
    for state in (RecvState.DATA_READ, RecvState.RESET_READ):
        assert set(RECV_TABLE[state].values()) == {state}
    with pytest.raises(LocalProtocolError):
        next_send_state(SendState.READY, SendEvent.ALL_ACKED)


# ----------------------------------------------------------------------------- ranges


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 20)), max_size=40))
def test_byte_ranges_match_a_set(ops: list[tuple[bool, int, int]]) -> None:
    ranges, model = ByteRanges(), set()
    for add, lo, size in ops:
        if add:
            ranges.add(lo, lo + size)
            model |= set(range(lo, lo + size))
        else:
            ranges.remove(lo, lo + size)
            model -= set(range(lo, lo + size))
        got = {i for lo_, hi_ in ranges for i in range(lo_, hi_)}
        assert got == model
        pairs = list(ranges)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(pairs))
        assert {i for a, b in ranges.missing(10, 50) for i in range(a, b)} == \
            set(range(10, 50)) - model
        assert ranges.covers(10, 20) == (set(range(10, 20)) <= model)


# ----------------------------------------------------------------------------- one stream


def _sender(limit: int = 10_000, buffer_limit: int = 10_000) -> SendStream:
    return SendStream(0, limit, SendLimit(10**9), buffer_limit)


def test_write_takes_only_what_fits_and_acks_free_the_buffer() -> None:
    send = _sender(buffer_limit=5000)
    assert send.write(b"a" * 8000) == 5000
    assert send.write(b"b") == 0 and send.writable == 0
    frames = send.fill(3000) + send.fill(3000)
    assert sum(len(f.data) for f in frames) == 5000
    for frame in frames[:1]:
        send.on_acked(frame)
    assert send.buffered == 5000 - len(frames[0].data)
    assert send.writable == len(frames[0].data)


def test_big_writes_are_sent_as_views_without_copies() -> None:
    data = bytes(range(256)) * 64
    send = _sender(limit=10**6, buffer_limit=10**6)
    send.write(data)
    (frame,) = send.fill(1200)
    assert type(frame.data) is memoryview and frame.data.obj is data


def test_small_writes_coalesce_into_one_frame() -> None:
    send = _sender()
    for i in range(100):
        send.write(bytes((i,)) * 3)
    frames = send.fill(1200)
    assert len(frames) == 1 and bytes(frames[0].data) == b"".join(bytes((i,)) * 3
                                                                 for i in range(100))


def test_lost_bytes_are_sent_again_before_new_ones_and_fin_follows() -> None:
    send = _sender()
    send.write(b"x" * 3000)
    send.close()
    first = send.fill(1200)
    rest = send.fill(5000)
    assert rest[-1].fin and rest[-1].end == 3000
    send.on_lost(first[0])
    for frame in rest:
        send.on_acked(frame)
    assert send.state is SendState.DATA_SENT
    (again,) = send.fill(5000)
    assert (again.offset, again.end) == (first[0].offset, first[0].end)
    send.on_acked(again)
    assert send.state is SendState.DATA_RECVD and send.buffered == 0


def test_a_lost_fin_alone_is_sent_again() -> None:
    send = _sender()
    send.write(b"abc")
    (data,) = send.fill(100)
    send.close()
    (fin,) = send.fill(100)
    assert fin.fin and fin.data == b"" and fin.offset == 3
    send.on_acked(data)
    send.on_lost(fin)
    (again,) = send.fill(100)
    assert again.fin and again.offset == 3
    send.on_acked(again)
    assert send.state is SendState.DATA_RECVD


def test_stream_credit_blocks_and_is_reported_once_per_limit() -> None:
    send = _sender(limit=1000)
    send.write(b"y" * 3000)
    frames = send.fill(5000)
    assert sum(len(f.data) for f in frames if isinstance(f, StreamFrame)) == 1000
    assert frames[-1] == StreamDataBlocked(0, 1000)
    assert send.fill(5000) == [] and not send.wants_send
    assert send.on_max_stream_data(2500)
    assert sum(len(f.data) for f in send.fill(5000) if isinstance(f, StreamFrame)) == 1500


def test_reset_drops_the_buffer_and_repeats_until_acknowledged() -> None:
    send = _sender()
    send.write(b"z" * 2000)
    sent = send.fill(1000)
    send.reset(7)
    assert send.buffered == 0 and send.state is SendState.RESET_SENT
    (reset,) = send.fill(100)
    assert reset == ResetStream(0, 7, sum(len(f.data) for f in sent))
    send.on_lost(sent[0])
    send.on_lost(reset)
    assert send.fill(100) == [reset]
    send.on_acked(reset)
    assert send.state is SendState.RESET_RECVD and send.fill(100) == []
    with pytest.raises(LocalProtocolError):
        send.write(b"more")


def _receiver(window: int = 4000) -> tuple[RecvStream, RecvLimit]:
    connection = RecvLimit(10**6, 10**6)
    return RecvStream(0, window, window, connection), connection


@given(st.data())
def test_reassembly_of_shuffled_duplicated_pieces(data: st.DataObject) -> None:
    payload = data.draw(st.binary(min_size=1, max_size=3000))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=12)))
    bounds = [0, *cuts, len(payload)]
    frames = [StreamFrame(0, lo, payload[lo:hi], hi == len(payload))
              for lo, hi in itertools.pairwise(bounds)]
    frames += data.draw(st.lists(st.sampled_from(frames), max_size=6))  # duplicates
    frames = data.draw(st.permutations(frames))
    recv, _ = _receiver()
    out = bytearray()
    for frame in frames:
        recv.on_frame(frame)
        assert recv.buffered <= 4000
        out += recv.read(data.draw(st.integers(-1, 500)))
    out += recv.read()
    assert bytes(out) == payload and recv.state is RecvState.DATA_READ and recv.at_eof


def test_duplicates_are_held_once() -> None:
    recv, _ = _receiver(window=10_000)
    recv.on_frame(StreamFrame(0, 100, b"a" * 500))
    recv.on_frame(StreamFrame(0, 50, b"a" * 1000))
    recv.on_frame(StreamFrame(0, 100, b"a" * 500))
    assert recv.buffered == 1000


def test_a_frame_beyond_the_stream_window_is_a_connection_error() -> None:
    recv, _ = _receiver(window=4000)
    recv.on_frame(StreamFrame(0, 3000, b"a" * 1000))
    with pytest.raises(RemoteProtocolError) as caught:
        recv.on_frame(StreamFrame(0, 3500, b"a" * 501))
    assert caught.value.code == "EFLOWCONTROL"


def test_reading_grants_more_once_half_the_window_is_read() -> None:
    recv, _ = _receiver(window=4000)
    recv.on_frame(StreamFrame(0, 0, b"a" * 4000))
    recv.read(1000)
    assert recv.fill(100) == []
    recv.read(1000)
    assert recv.fill(100) == [MaxStreamData(0, 6000)]
    recv.on_frame(StreamFrame(0, 4000, b"b" * 2000))
    with pytest.raises(RemoteProtocolError):
        recv.on_frame(StreamFrame(0, 6000, b"c"))


@pytest.mark.parametrize("frame", [
    StreamFrame(0, 0, b"abc", True),     # final size moved down
    StreamFrame(0, 0, b"abcdefg", True),  # final size moved up
    StreamFrame(0, 9, b"z"),              # data past the final size
    ResetStream(0, 1, 4),                 # reset with another final size
])
def test_a_changed_final_size_is_a_connection_error(frame: object) -> None:
    recv, _ = _receiver()
    recv.on_frame(StreamFrame(0, 0, b"abcde", True))
    with pytest.raises(RemoteProtocolError) as caught:
        if isinstance(frame, ResetStream):
            recv.on_reset(frame)
        else:
            recv.on_frame(frame)
    assert caught.value.code == "EFINALSIZE"


def test_a_reset_frees_connection_credit_for_unread_bytes() -> None:
    recv, connection = _receiver()
    recv.on_frame(StreamFrame(0, 0, b"a" * 1000))
    assert recv.on_reset(ResetStream(0, 3, 2500))
    assert connection.received == 2500 and connection.consumed == 2500
    assert recv.buffered == 0 and recv.reset_code == 3
    assert recv.read() == b"" and recv.state is RecvState.RESET_READ


def test_stop_drops_held_bytes_and_asks_the_peer_to_stop() -> None:
    recv, connection = _receiver()
    recv.on_frame(StreamFrame(0, 0, b"a" * 1000))
    recv.stop(9)
    assert recv.buffered == 0 and connection.consumed == 1000
    (frame,) = recv.fill(100)
    assert frame == StopSending(0, 9)
    recv.on_frame(StreamFrame(0, 1000, b"b" * 500))
    assert recv.buffered == 0 and connection.consumed == 1500
    recv.on_lost(frame)
    assert recv.fill(100) == [frame]


# ----------------------------------------------------------------------------- two managers


class Link:
    """Two stream managers joined by a seeded link that loses, duplicates and reorders
    whole packets of frames, each packet acknowledged (or declared lost) as a unit."""

    def __init__(self, seed: int, loss: float = 0.0, config: StreamConfig | None = None,
                 packet: int = 1200) -> None:
        self.random = random.Random(seed)
        self.loss = loss
        self.packet = packet
        self.a = StreamManager(initiator=True, config=config)
        self.b = StreamManager(initiator=False, config=config)
        self.received: dict[tuple[str, int], bytearray] = {}
        self.events: dict[str, list] = {"a": [], "b": []}
        self.read_limit: int | None = None
        self.sent: list = []

    def _send(self, sender: StreamManager, receiver: StreamManager) -> bool:
        packets = []
        while sender.wants_send and len(packets) < 20:
            frames = sender.fill(self.packet)
            if not frames:
                break
            assert sum(F.encoded_size(f) for f in frames) <= self.packet
            packets.append(frames)
        self.random.shuffle(packets)
        for frames in packets:
            payload = b"".join(F.encode(f) for f in frames)
            self.sent += frames
            roll = self.random.random()
            if roll < self.loss:
                for frame in frames:
                    sender.on_lost(frame)
                continue
            for frame in F.decode(payload):
                receiver.receive(frame)
            if roll < self.loss * 1.5:  # arrived, but the acknowledgement was lost
                for frame in frames:
                    sender.on_lost(frame)
            else:
                for frame in frames:
                    sender.on_acked(frame)
        return bool(packets)

    def _read(self, name: str, manager: StreamManager) -> None:
        for event in manager.pop_events():
            self.events[name].append(event)
        for stream_id, stream in list(manager.streams.items()):
            if self.read_limit == 0:
                break
            chunk = stream.read(-1 if self.read_limit is None else self.read_limit)
            self.received.setdefault((name, stream_id), bytearray()).extend(chunk)

    def step(self) -> bool:
        """One round each way; whether anything was sent."""
        moved = self._send(self.a, self.b) | self._send(self.b, self.a)
        self._read("a", self.a)
        self._read("b", self.b)
        return moved

    def run(self, rounds: int = 5000) -> None:
        """Run until neither side has anything to send."""
        for _ in range(rounds):
            if not self.step() and not self.a.wants_send and not self.b.wants_send:
                return
        raise AssertionError("the link did not go quiet")


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.sampled_from([0.0, 0.1, 0.3]))
def test_many_streams_both_ways_arrive_byte_identical(seed: int, loss: float) -> None:
    link = Link(seed, loss, StreamConfig(send_buffer=16_384))
    rng = random.Random(seed)
    sent: dict[tuple[str, int], bytes] = {}
    pending = []
    for side, manager in (("b", link.a), ("a", link.b)):
        for _ in range(INITIAL_MAX_STREAMS + 4):
            pending.append((side, manager, rng.randbytes(rng.randrange(0, 40_000))))
    open_streams: list = []
    for _ in range(400):
        while pending and pending[0][1].can_open():
            side, manager, data = pending.pop(0)
            stream = manager.open()
            open_streams.append((stream, memoryview(data)))
            sent[(side, stream.stream_id)] = data
        for index, (stream, rest) in enumerate(open_streams):
            if rest is None:
                continue
            taken = stream.write(rest) if rest else 0
            rest = rest[taken:]
            if not rest:
                stream.close()
                rest = None
            open_streams[index] = (stream, rest)
        link.step()
        if not pending and all(rest is None for _, rest in open_streams):
            break
    link.run()
    assert not pending
    for key, data in sent.items():
        assert bytes(link.received.get(key, b"")) == data, key
    # every stream ended on the receiving side, and each opened stream was announced
    opened = {e.stream_id for e in link.events["b"] if isinstance(e, StreamOpened)}
    assert opened == {sid for side, sid in sent if side == "b"}


def test_a_slow_reader_bounds_both_sides_memory_and_slows_the_writer() -> None:
    config = StreamConfig(stream_window=INITIAL_STREAM_DATA, send_buffer=32_768)
    link = Link(1, 0.05, config)
    link.read_limit = 0
    stream = link.a.open()
    data = random.Random(2).randbytes(300_000)
    offset = 0
    for _ in range(50):
        offset += stream.write(memoryview(data)[offset:])
        for _ in range(20):
            link.step()
        assert stream.send.buffered <= 32_768
        peer = link.b.streams.get(stream.stream_id)
        assert peer is None or peer.recv.buffered <= INITIAL_STREAM_DATA
    assert offset == INITIAL_STREAM_DATA + 32_768  # the writer was held back
    link.read_limit = 4096
    waiting = stream.writer_waiting
    for _ in range(2000):
        if offset < len(data):
            offset += stream.write(memoryview(data)[offset:])
            if offset == len(data):
                stream.close()
        link.step()
        if offset == len(data) and not link.a.wants_send and not link.b.wants_send:
            break
    link.read_limit = None
    link.run()
    assert bytes(link.received[("b", 0)]) == data
    assert waiting and any(isinstance(e, StreamWritable) for e in link.events["a"])


def test_the_connection_window_is_shared_and_blocking_is_reported() -> None:
    link = Link(3, 0.0, StreamConfig(connection_window=INITIAL_DATA))
    link.read_limit = 0
    streams = [link.a.open() for _ in range(6)]
    for stream in streams:
        stream.write(b"q" * 60_000)
    link.run(200)
    held = sum(s.recv.buffered for s in link.b.streams.values())
    assert held == INITIAL_DATA == link.a.send_credit.used
    assert link.sent.count(DataBlocked(INITIAL_DATA)) == 1


def _drain(manager: StreamManager) -> list:
    out = []
    while manager.wants_send:
        frames = manager.fill(1200)
        if not frames:
            break
        out += frames
    return out


def test_streams_share_packets_fairly() -> None:
    manager = StreamManager(initiator=True)
    streams = [manager.open() for _ in range(3)]
    for stream in streams:
        stream.write(b"f" * 50_000)
    counts = {s.stream_id: 0 for s in streams}
    for _ in range(30):
        for frame in manager.fill(1200):
            if isinstance(frame, StreamFrame):
                counts[frame.stream_id] += len(frame.data)
    assert max(counts.values()) - min(counts.values()) <= 1200


def test_stream_limits_on_both_sides() -> None:
    a = StreamManager(initiator=True)
    b = StreamManager(initiator=False, config=StreamConfig(max_streams=INITIAL_MAX_STREAMS))
    for frame in _drain(b):
        a.receive(frame)
    assert a.open_limit == INITIAL_MAX_STREAMS == b.peer_limit
    streams = [a.open() for _ in range(INITIAL_MAX_STREAMS)]
    with pytest.raises(LocalProtocolError) as caught:
        a.open()
    assert caught.value.code == "EAGAIN"
    assert StreamsBlocked(INITIAL_MAX_STREAMS) in _drain(a)
    with pytest.raises(RemoteProtocolError) as refused:
        b.receive(StreamFrame(4 * INITIAL_MAX_STREAMS, 0, b"x"))
    assert refused.value.code == "ESTREAMLIMIT"
    b.receive(StreamFrame(streams[3].stream_id, 0, b"x"))  # opens 0..3 at once
    assert [e.stream_id for e in b.pop_events() if isinstance(e, StreamOpened)] == \
        [s.stream_id for s in streams[:4]]
    a.receive(MaxStreams(INITIAL_MAX_STREAMS + 1))
    assert StreamsAvailable(INITIAL_MAX_STREAMS + 1) in a.pop_events()
    a.open()


@pytest.mark.parametrize("frame", [
    StreamFrame(0, 0, b"x"),          # our own stream 0, never opened
    StreamFrame(2, 0, b"x"),          # a unidirectional stream
    MaxStreamData(4, 100),            # our own stream 1, never opened
])
def test_frames_for_streams_that_cannot_exist_are_connection_errors(frame: object) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        StreamManager(initiator=True).receive(frame)
    assert caught.value.code == "ESTREAMSTATE"


def test_a_peer_beyond_the_connection_window_is_a_connection_error() -> None:
    b = StreamManager(initiator=False, config=StreamConfig(connection_window=INITIAL_DATA))
    for index in range(4):
        b.receive(StreamFrame(4 * index, 0, b"x" * (INITIAL_STREAM_DATA - 1)))
    with pytest.raises(RemoteProtocolError) as caught:
        b.receive(StreamFrame(16, 0, b"x" * 5))
    assert caught.value.code == "EFLOWCONTROL"


def test_reset_and_stop_sending_reach_the_other_side() -> None:
    link = Link(5)
    stream = link.a.open()
    stream.write(b"r" * 5000)
    link.run()
    stream.reset(42)
    link.run()
    assert StreamReset(0, 42) in link.events["b"]
    peer = link.b.streams[0]
    peer.write(b"s" * 100_000)
    stream.stop(17)
    link.run()
    assert StreamStopped(0, 17) in link.events["b"]
    assert peer.send.state is SendState.RESET_RECVD
    assert StreamClosed(0) in link.events["a"] and StreamClosed(0) in link.events["b"]
    assert not link.a.streams and not link.b.streams


def test_late_frames_for_a_closed_stream_are_ignored_and_its_slot_is_given_back() -> None:
    link = Link(6)
    stream = link.a.open()
    stream.write(b"done")
    stream.close()
    link.run()
    peer = link.b.streams[0]
    peer.close()
    link.run()
    assert not link.a.streams and not link.b.streams
    link.b.receive(StreamFrame(0, 0, b"done", True))  # a late copy
    assert not link.b.streams
    assert link.b.peer_limit == StreamConfig().max_streams + 1 == link.a.open_limit


def test_hostile_frame_sequences_raise_only_remote_protocol_errors() -> None:
    rng = random.Random(7)
    for _ in range(300):
        manager = StreamManager(initiator=bool(rng.getrandbits(1)),
                                config=StreamConfig(max_streams=INITIAL_MAX_STREAMS))
        try:
            for _ in range(20):
                sid = rng.randrange(0, 40)
                frame = rng.choice([
                    StreamFrame(sid, rng.randrange(0, 70_000), rng.randbytes(rng.randrange(0, 900)),
                                rng.random() < 0.2),
                    ResetStream(sid, rng.randrange(0, 5), rng.randrange(0, 70_000)),
                    StopSending(sid, 1), MaxStreamData(sid, rng.randrange(0, 10**6)),
                    MaxData(rng.randrange(0, 10**7)), MaxStreams(rng.randrange(0, 100)),
                    StreamDataBlocked(sid, 5), DataBlocked(4), StreamsBlocked(3),
                ])
                manager.receive(frame)
                for stream in list(manager.streams.values()):
                    stream.read(rng.randrange(-1, 3000))
                _drain(manager)
        except RemoteProtocolError:
            pass


# ----------------------------------------------------------------------------- datagrams


def test_datagrams_fill_in_order_and_are_never_sent_again() -> None:
    queue = DatagramQueue()
    for index in range(5):
        queue.push(3, bytes((index,)) * 500, 1200)
    first = queue.fill(1200)
    assert [f.data[0] for f in first] == [0, 1]
    assert sum(F.encoded_size(f) for f in first) <= 1200
    queue.on_lost(first[0])
    assert [f.data[0] for f in queue.fill(1200)] == [2, 3]
    assert queue.lost == 1 and queue.wants_send


def test_a_full_datagram_queue_drops_the_oldest_and_too_big_is_refused() -> None:
    queue = DatagramQueue(max_queued=3)
    for index in range(5):
        queue.push(0, bytes((index,)), 1200)
    assert [f.data for f in queue.fill(1200)] == [b"\x02", b"\x03", b"\x04"]
    assert queue.dropped == 2
    with pytest.raises(LocalProtocolError) as caught:
        queue.push(0, b"x" * 1197, 1200)
    assert caught.value.code == "EMSGSIZE"
    queue.push(0, b"x" * 1196, 1200)
    (frame,) = queue.fill(1200)
    assert F.encoded_size(frame) == 1200


def test_a_stream_whose_reader_stopped_after_the_writer_finished_is_forgotten() -> None:
    link = Link(8)
    link.read_limit = 0
    stream = link.a.open()
    stream.write(b"w" * 3000)
    stream.close()
    stream.stop()  # a's own reading side: a stops reading b's (empty) side
    link.run()
    peer = link.b.streams[0]
    assert peer.send.state is SendState.RESET_RECVD  # b never wrote: it reset its side
    assert StreamStopped(0, 0) in link.events["b"]
    peer.stop(5)  # b does not want a's bytes either; a had sent them all already
    link.run()
    assert not link.a.streams and not link.b.streams


def test_a_read_of_a_stream_already_forgotten_is_harmless() -> None:
    """Both sides done, the stream is forgotten; a last read at its end (as an
    application makes to see the end) wakes it once more, and filling passes it by."""
    link = Link(9)
    stream = link.a.open()
    stream.write(b"ask")
    stream.close()
    link.run()
    peer = link.b.streams[0]
    peer.write(b"answer")
    peer.close()
    link.run()
    assert not link.a.streams and not link.b.streams
    closed = sum(isinstance(e, StreamClosed) for e in link.events["a"])
    assert stream.read() == b"" and stream.recv.at_eof
    assert link.a.wants_send
    assert link.a.fill(1200) == []  # not a KeyError, no second StreamClosed
    assert sum(isinstance(e, StreamClosed) for e in link.a.pop_events()) == 0
    assert closed == 1 and not link.a.wants_send


# ----------------------------------------------------------------------------- as a flow


def test_a_frame_flow_fills_datagrams_first_and_hands_back_what_it_wrote() -> None:
    manager = StreamManager(initiator=True)
    datagrams = DatagramQueue()
    flow = FrameFlow(datagrams, manager)
    assert flow.has_data()  # the manager's first MAX_DATA
    stream = manager.open()
    stream.write(b"s" * 5000)
    datagrams.push(1, b"live", 1200)
    parts: list = []
    left, record = flow.fill(parts, 1200)
    payload = b"".join(parts)
    assert len(payload) == 1200 - left and left < 24
    frames = F.decode(payload)
    assert frames[0] == Datagram(1, b"live")
    assert record[0] == (datagrams, [frames[0]])  # each source with its frames
    sent = sum(len(f.data) for f in frames if isinstance(f, StreamFrame))
    flow.on_lost(record)
    assert datagrams.lost == 1 and not datagrams.wants_send
    assert stream.send._lost.first() == (0, sent)  # the stream will send it again
    _, again = flow.fill([], 1200)
    flow.on_acked(again)
    assert stream.send.acked_floor == sent


# ----------------------------------------------------------------------------- attacks


def _allocated_while(feed) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        feed()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_tiny_in_order_frames_cost_little_more_than_their_bytes() -> None:
    manager = StreamManager(initiator=False)
    count = 60_000

    def feed() -> None:
        for offset in range(count):
            manager.receive(StreamFrame(0, offset, b"t"))

    held = _allocated_while(feed)
    assert manager.streams[0].recv.buffered == count
    assert held < 3 * count  # as one small frame object each, it would be ~100x
    data = manager.streams[0].read(10) + manager.streams[0].read()
    assert data == b"t" * count


def test_a_peer_making_tiny_out_of_order_pieces_is_stopped_early() -> None:
    manager = StreamManager(initiator=False)
    frames = [StreamFrame(4 * (n % 8), 2 * (n // 8) + 1, b"g") for n in range(12_000)]

    def feed() -> None:
        with pytest.raises(RemoteProtocolError):
            for frame in frames:
                manager.receive(frame)

    held = _allocated_while(feed)
    assert held < 4 * 1024 * 1024  # bounded by the piece count, not the window


def test_views_of_bytes_are_kept_but_mutable_buffers_are_copied() -> None:
    send = _sender(limit=10**6, buffer_limit=10**6)
    data = bytes(range(256)) * 40
    send.write(memoryview(data)[100:])
    mutable = bytearray(b"m" * 8000)
    send.write(mutable)
    mutable[:] = b"z" * 8000  # the caller reuses its buffer
    frames = send.fill(20_000)
    assert frames[0].data.obj is data  # no copy of the view
    sent = b"".join(bytes(f.data) for f in frames)
    assert sent == data[100:] + b"m" * 8000
