"""Codec round trips and the parser's error discipline."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core import stun
from shoal.core.wire import (
    MAX_DATA_PAYLOAD,
    MAX_RELAYED_DATAGRAM,
    MAX_VARINT,
    MIN_INIT_SIZE,
    Ack,
    Channel,
    ChannelAccepted,
    ChannelRefused,
    ChannelWindow,
    Close,
    Extension,
    Intro,
    IntroFailed,
    IntroRequest,
    MessageFragment,
    MessagesBlocked,
    MessageWindow,
    ObservedAddress,
    PathChallenge,
    PathResponse,
    Ping,
    Register,
    RelayRecv,
    RelaySend,
    decode_cookie,
    decode_final,
    decode_frames,
    decode_hello,
    decode_init,
    decode_varint,
    decode_version,
    encode_cookie,
    encode_final,
    encode_frame,
    encode_hello,
    encode_init,
    encode_varint,
    encode_version,
)
from shoal.errors import RemoteProtocolError

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addresses = st.tuples(st.one_of(ipv4, ipv6), st.integers(0, 65535))
peer_ids = st.binary(min_size=32, max_size=32)


@st.composite
def ack_frames(draw: st.DrawFn) -> Ack:
    count = draw(st.integers(1, 10))
    hi = draw(st.integers(0, 10**9))
    ranges = []
    for _ in range(count):
        length = draw(st.integers(0, min(50, hi)))
        lo = hi - length
        ranges.append((lo, hi))
        hi = lo - draw(st.integers(2, 100))
        if hi < 0:
            break
    return Ack(tuple(ranges), draw(st.integers(0, 10**6)))


@st.composite
def fragments(draw: st.DrawFn) -> MessageFragment:
    data = draw(st.binary(min_size=1, max_size=300))
    offset = draw(st.integers(0, 10**6))
    total = offset + len(data) + draw(st.integers(0, 1000))
    return MessageFragment(draw(st.integers(0, 300)), draw(st.integers(0, 2**30)), total, offset,
                           data)


frames = st.one_of(
    st.just(Ping()),
    ack_frames(),
    fragments(),
    st.builds(Close, st.integers(0, 1000), st.text(max_size=40)),
    st.builds(ObservedAddress, addresses),
    st.builds(Register, st.lists(addresses, max_size=5).map(tuple), st.integers(0, 255)),
    st.builds(IntroRequest, st.integers(0, 2**30), peer_ids),
    st.builds(Intro, st.integers(0, 2**30), peer_ids, st.lists(addresses, max_size=5).map(tuple),
              st.integers(0, 255), st.binary(min_size=8, max_size=8),
              st.sampled_from([b"", bytes(range(96))])),
    st.builds(IntroFailed, st.integers(0, 2**30), peer_ids),
    st.builds(RelaySend, peer_ids, st.binary(min_size=1, max_size=1164)),
    st.builds(RelayRecv, peer_ids, st.binary(min_size=1, max_size=1164)),
    st.builds(PathChallenge, st.binary(min_size=8, max_size=8)),
    st.builds(PathResponse, st.binary(min_size=8, max_size=8)),
    st.builds(Channel, st.integers(0, 2**20), st.text(max_size=40)),
    st.builds(ChannelAccepted, st.integers(0, 2**20)),
    st.builds(ChannelRefused, st.integers(0, 2**20)),
    st.builds(ChannelWindow, st.integers(0, 2**20), st.integers(0, 2**62 - 1)),
    st.builds(MessageWindow, st.integers(0, 2**62 - 1)),
    st.builds(MessagesBlocked, st.integers(0, 2**20)),
    st.builds(Extension, st.integers(0xC0, 0xFF), st.binary(max_size=100)),
)


@given(st.integers(0, MAX_VARINT))
def test_varint_round_trip(value: int) -> None:
    raw = encode_varint(value)
    assert decode_varint(raw, 0) == (value, len(raw))


@given(st.lists(frames, max_size=6))
def test_frames_round_trip(items: list) -> None:
    raw = b"".join(encode_frame(f) for f in items)
    assert list(decode_frames(raw)) == items


@given(st.binary(max_size=200))
def test_random_payloads_raise_only_protocol_errors(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        list(decode_frames(raw))


@given(st.lists(frames, min_size=1, max_size=4), st.data())
def test_truncated_frames_are_rejected_cleanly(items: list, data: st.DataObject) -> None:
    encoded = [encode_frame(f) for f in items]
    raw = b"".join(encoded)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        decoded = list(decode_frames(raw[:cut]))
    except RemoteProtocolError:
        return
    # Decoding silently is right only at a frame boundary, and then it yields exactly the
    # whole frames before the cut.
    boundaries = [sum(len(e) for e in encoded[:i]) for i in range(len(encoded) + 1)]
    assert cut in boundaries
    assert decoded == items[: boundaries.index(cut)]


def test_init_is_padded_against_amplification() -> None:
    datagram = encode_init(b"12345678", b"e" * 32)
    assert len(datagram) == MIN_INIT_SIZE
    assert decode_init(datagram)[1:] == (b"12345678", b"e" * 32, b"")
    with pytest.raises(RemoteProtocolError):
        decode_init(datagram[:1000])
    relayed = encode_init(b"12345678", b"e" * 32, pad=False, cookie=b"c" * 16)
    assert len(relayed) < 80
    assert decode_init(relayed, padded=False)[1:] == (b"12345678", b"e" * 32, b"c" * 16)
    with pytest.raises(RemoteProtocolError):
        decode_init(relayed)
    with pytest.raises(RemoteProtocolError):
        decode_init(relayed[:-1], padded=False)  # the cookie is cut


def test_handshake_packets_round_trip_and_stay_small() -> None:
    final = encode_final(b"r" * 8, b"s" * 8, b"m1" * 20, b"m3" * 40)
    assert decode_final(final) == (b"r" * 8, b"s" * 8, b"m1" * 20, b"m3" * 40)
    cookie = encode_cookie(b"s" * 8, b"c" * 16)
    assert decode_cookie(cookie) == (b"s" * 8, b"c" * 16)
    assert len(cookie) < MIN_INIT_SIZE
    version = encode_version(b"s" * 8, (2, 3))
    assert decode_version(version) == (b"s" * 8, (2, 3))
    for bad in (cookie[:-1], version[:-1], final[:18]):
        with pytest.raises(RemoteProtocolError):
            {0xD6: decode_cookie, 0xD7: decode_version, 0xD3: decode_final}[bad[0]](bad)
    assert decode_hello(encode_hello((2, 7), 5)) == ((2, 7), 5)


def test_unknown_extension_frames_are_skipped_and_other_unknown_types_are_errors() -> None:
    payload = encode_frame(Ping()) + bytes((0xE7, 3)) + b"abc" + encode_frame(ChannelAccepted(4))
    assert list(decode_frames(payload)) == [Ping(), Extension(0xE7, b"abc"), ChannelAccepted(4)]
    with pytest.raises(RemoteProtocolError):
        list(decode_frames(encode_frame(Ping()) + b"\x7f"))


def test_empty_fragments_of_non_empty_messages_are_refused() -> None:
    assert list(decode_frames(encode_frame(MessageFragment(0, 0, 0, 0, b"")))) == [
        MessageFragment(0, 0, 0, 0, b"")]
    with pytest.raises(RemoteProtocolError):
        list(decode_frames(encode_frame(MessageFragment(0, 0, 10, 3, b""))))


def test_relay_frames_refuse_packets_that_do_not_fit() -> None:
    raw = encode_frame(RelaySend(bytes(32), b"x" * (MAX_RELAYED_DATAGRAM + 1)))
    with pytest.raises(RemoteProtocolError):
        list(decode_frames(raw))
    fits = encode_frame(RelaySend(bytes(32), b"x" * MAX_RELAYED_DATAGRAM))
    assert len(fits) <= MAX_DATA_PAYLOAD


@given(st.binary(min_size=12, max_size=12), addresses)
def test_stun_binding_round_trip(txid: bytes, address: tuple) -> None:
    answer = stun.encode_binding_success(txid, address)
    assert stun.looks_like_stun(answer)
    message = stun.decode(answer)
    assert message.method_class == stun.BINDING_SUCCESS
    assert message.transaction_id == txid
    assert message.mapped == address
    assert len(answer) == (32 if ":" not in address[0] else 44)


@given(st.binary(max_size=80))
def test_stun_parser_raises_only_protocol_errors(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        stun.decode(raw)


@given(st.binary(min_size=12, max_size=12), addresses, addresses, addresses)
def test_padded_requests_leave_room_for_a_full_rfc5780_answer(
    txid: bytes, mapped: tuple, other: tuple, origin: tuple
) -> None:
    request = stun.encode_binding_request(txid, change=stun.CHANGE_IP | stun.CHANGE_PORT,
                                          pad_to=stun.PADDED_REQUEST_SIZE)
    assert len(request) == stun.PADDED_REQUEST_SIZE
    parsed = stun.decode(request)
    assert parsed.change == stun.CHANGE_IP | stun.CHANGE_PORT and parsed.size == len(request)
    answer = stun.encode_binding_success(txid, mapped, other=other, origin=origin)
    assert len(answer) <= len(request)
    decoded = stun.decode(answer)
    assert (decoded.mapped, decoded.other) == (mapped, other)
