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
    Close,
    Intro,
    IntroFailed,
    IntroRequest,
    MessageFragment,
    ObservedAddress,
    Ping,
    Register,
    RelayRecv,
    RelaySend,
    decode_frames,
    decode_init,
    decode_varint,
    encode_frame,
    encode_init,
    encode_varint,
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
    data = draw(st.binary(max_size=300))
    offset = draw(st.integers(0, 10**6))
    total = offset + len(data) + draw(st.integers(0, 1000))
    return MessageFragment(draw(st.integers(0, 2**30)), total, offset, data)


frames = st.one_of(
    st.just(Ping()),
    ack_frames(),
    fragments(),
    st.builds(Close, st.integers(0, 1000), st.text(max_size=40)),
    st.builds(ObservedAddress, addresses),
    st.builds(Register, st.lists(addresses, max_size=5).map(tuple), st.integers(0, 255)),
    st.builds(IntroRequest, st.integers(0, 2**30), peer_ids),
    st.builds(Intro, st.integers(0, 2**30), peer_ids, st.lists(addresses, max_size=5).map(tuple),
              st.integers(0, 255), st.binary(min_size=8, max_size=8)),
    st.builds(IntroFailed, st.integers(0, 2**30), peer_ids),
    st.builds(RelaySend, peer_ids, st.binary(min_size=1, max_size=1164)),
    st.builds(RelayRecv, peer_ids, st.binary(min_size=1, max_size=1164)),
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
    raw = b"".join(encode_frame(f) for f in items)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with contextlib.suppress(RemoteProtocolError):
        list(decode_frames(raw[:cut]))


def test_init_is_padded_against_amplification() -> None:
    datagram = encode_init(b"12345678", b"e" * 32)
    assert len(datagram) == MIN_INIT_SIZE
    assert decode_init(datagram)[1:] == (b"12345678", b"e" * 32)
    with pytest.raises(RemoteProtocolError):
        decode_init(datagram[:1000])
    relayed = encode_init(b"12345678", b"e" * 32, pad=False)
    assert len(relayed) < 64
    assert decode_init(relayed, padded=False)[1:] == (b"12345678", b"e" * 32)
    with pytest.raises(RemoteProtocolError):
        decode_init(relayed)


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
