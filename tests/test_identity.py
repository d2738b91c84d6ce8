import os
import stat

import pytest

from shoal.errors import IdentityError, LocalProtocolError
from shoal.identity import Identity, peer_id_to_bytes, verify_signature


def test_identity_round_trips_through_a_private_file(tmp_path) -> None:
    path = tmp_path / "sub" / "id.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Identity.load_or_create(path)
    assert again.peer_id == first.peer_id
    assert len(first.peer_id) == 64


def test_peer_id_is_the_verifying_key() -> None:
    identity = Identity.generate()
    signature = identity.sign(b"data")
    assert verify_signature(peer_id_to_bytes(identity.peer_id), b"data", signature)
    other = Identity.generate()
    assert not verify_signature(peer_id_to_bytes(other.peer_id), b"data", signature)


def test_corrupt_identity_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("shoal-identity-v1\nnothex\n")
    with pytest.raises(IdentityError):
        Identity.load(path)
    with pytest.raises(IdentityError) as info:
        Identity.load(tmp_path / "missing.key")
    assert info.value.code == "ENOENT"


@pytest.mark.parametrize("text", ["", "zz", "ab" * 31, "ab" * 33])
def test_malformed_peer_ids_are_refused(text: str) -> None:
    with pytest.raises(LocalProtocolError):
        peer_id_to_bytes(text)
