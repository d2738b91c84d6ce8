"""The Noise handshake against the published cacophony test vectors."""

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shoal.core.noise import CipherState, HandshakeState
from shoal.errors import RemoteProtocolError

VECTORS = json.loads((Path(__file__).parent / "data" / "noise_vectors.json").read_text())


def _static(vector: dict, key: str) -> X25519PrivateKey | None:
    raw = vector.get(key)
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(raw)) if raw else None


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["protocol_name"])
def test_published_vector(vector: dict) -> None:
    pattern = vector["protocol_name"].split("_")[1]
    prologue = bytes.fromhex(vector["init_prologue"])
    remote = vector.get("init_remote_static")
    init = HandshakeState(
        pattern, True, prologue, _static(vector, "init_static"),
        bytes.fromhex(vector["init_ephemeral"]),
        remote_static=bytes.fromhex(remote) if remote else None,
    )
    resp = HandshakeState(
        pattern, False, prologue, _static(vector, "resp_static"),
        bytes.fromhex(vector["resp_ephemeral"]),
    )
    messages = vector["messages"]
    writer, reader = init, resp
    index = 0
    while not init.complete:
        payload = bytes.fromhex(messages[index]["payload"])
        wire = writer.write_message(payload)
        assert wire.hex() == messages[index]["ciphertext"]
        assert reader.read_message(wire) == payload
        writer, reader = reader, writer
        index += 1
    assert resp.complete
    # Every handshake payload was encrypted with the running hash as associated data, so
    # matching ciphertexts already pin the transcript; both sides must agree on its end.
    assert init.handshake_hash == resp.handshake_hash
    i2r, r2i = init.split()
    assert (i2r, r2i) == resp.split()
    # Transport messages alternate, starting with whoever did not send the last handshake message.
    send = {True: CipherState(i2r), False: CipherState(r2i)}
    sender_is_initiator = len(PATTERN_LEN[pattern]) % 2 == 0
    for message in messages[index:]:
        payload = bytes.fromhex(message["payload"])
        sealed = send[sender_is_initiator].encrypt_with_ad(b"", payload)
        assert sealed.hex() == message["ciphertext"]
        sender_is_initiator = not sender_is_initiator


PATTERN_LEN = {"NN": (1, 2), "XX": (1, 2, 3), "IK": (1, 2)}


def test_tampered_message_is_refused() -> None:
    seed_a, seed_b = bytes(range(32)), bytes(range(1, 33))
    keys = [X25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (5, 6)]
    init = HandshakeState("XX", True, b"p", keys[0], seed_a)
    resp = HandshakeState("XX", False, b"p", keys[1], seed_b)
    resp.read_message(init.write_message(b""))
    msg2 = bytearray(resp.write_message(b"hello"))
    msg2[40] ^= 1
    with pytest.raises(RemoteProtocolError):
        init.read_message(bytes(msg2))


def test_truncated_message_is_refused() -> None:
    init = HandshakeState("XX", True, b"", X25519PrivateKey.generate(), bytes(32))
    resp = HandshakeState("XX", False, b"", X25519PrivateKey.generate(), bytes([9]) * 32)
    with pytest.raises(RemoteProtocolError):
        resp.read_message(init.write_message(b"")[:20])
