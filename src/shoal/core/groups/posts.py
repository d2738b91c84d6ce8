"""Group posts and group keys: what a post looks like on the wire and who can read it.

Theory of operation
-------------------
A group is named by its own Ed25519 key pair: the public key is the group id, the private
key belongs to the group's admin. Members share a symmetric *epoch key*; each post is
encrypted with the current one (ChaCha20-Poly1305) and signed by its author's own identity
key, so members know who wrote what and a member cannot post as another. Every envelope
is self-describing and verifiable by anyone::

    envelope = version(1) kind(1) group_tag(32) epoch(u32) author(32) time_ms(u64) body sig(64)

``group_tag`` is a hash of the group id, so nodes that carry posts for a group they are not
in see which tag a post belongs to, who signed it and when, but not the group id or the
content. The signature covers everything before it; a post's id is the SHA-256 of the
whole envelope. A ``POST`` body is a random nonce and the ciphertext of
``topic, parents, data``, with the header as associated data (a signer cannot move a
ciphertext to another author, epoch or time). A ``GRANT`` body, signed by the group key
itself, hands an epoch key to listed members, each copy sealed to that member's X25519
key (an ephemeral X25519 exchange, HKDF-SHA256, ChaCha20-Poly1305).

Removing a member is a new epoch: the admin draws a new key and grants it to every
remaining member only. What that does and does not protect is written in
docs/protocol.md ("Groups: posts and keys").

An invite is a text string that carries the group id, the current epoch and its key, the
group's name and a few hints of where to find members.

Nothing here reads a clock or the OS random source: times and random bytes are passed in.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.errors import LocalProtocolError, RemoteProtocolError
from shoal.identity import STATIC_PROOF_CONTEXT, Identity, verify_signature

RandomBytes = Callable[[int], bytes]

VERSION = 1
POST = 1
GRANT = 2
KINDS = (POST, GRANT)
MAX_ENVELOPE_BYTES = 256 * 1024
MAX_TOPIC_BYTES = 255
MAX_PARENTS = 32
MAX_GRANTEES = 4096
MAX_HINTS = 8
KEY_BYTES = 32
NONCE_BYTES = 12
_HEADER = struct.Struct(">BB32sI32sQ")
HEADER_BYTES = _HEADER.size
SIGNATURE_BYTES = 64
_SIGNING_CONTEXT = b"shoal/group-envelope/v1\0"
_TAG_CONTEXT = b"shoal/group-tag/v1\0"
_SEAL_CONTEXT = b"shoal/group-sealed-key/v1\0"
_SEALED_BYTES = 32 + KEY_BYTES + 16
_GRANTEE_BYTES = 32 + _SEALED_BYTES
INVITE_PREFIX = "shoal-group:"
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


class PostError(RemoteProtocolError):
    """An envelope is malformed: too short, too long, or with fields out of range."""


class ForgedPostError(PostError):
    """The signature does not verify under the author key the envelope names: forged, or
    changed after signing."""

    default_code = "EPERM"


class TamperedPostError(PostError):
    """A signed post whose ciphertext does not open with its epoch's key (its author
    encrypted garbage, or for another group)."""

    default_code = "EBADMSG"


class UnknownEpochError(PostError):
    """A post under an epoch whose key this member does not hold (it was granted before
    the member joined, or after the member was removed)."""

    default_code = "ENOKEY"


def group_tag(group_id: bytes) -> bytes:
    """The tag envelopes of group ``group_id`` carry (a hash: carriers do not learn the id)."""
    return hashlib.sha256(_TAG_CONTEXT + group_id).digest()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope whose signature has been checked (by ``parse_envelope``)."""

    kind: int
    tag: bytes
    epoch: int
    author: bytes
    time_ms: int
    body: bytes
    raw: bytes

    @property
    def id(self) -> bytes:
        """The post id: SHA-256 of the whole signed envelope."""
        return hashlib.sha256(self.raw).digest()


@dataclass(frozen=True, slots=True)
class Post:
    """A post a member has opened."""

    id: bytes
    author: str
    """The author's peer id."""
    topic: str
    data: bytes
    parents: tuple[bytes, ...]
    """Ids of the posts this one follows (its causal past)."""
    time_ms: int
    epoch: int

    @property
    def time(self) -> float:
        """The author's clock when posting, in seconds since the epoch."""
        return self.time_ms / 1000


def _sign_envelope(sign: Callable[[bytes], bytes], kind: int, tag: bytes, epoch: int,
                   author: bytes, time_ms: int, body: bytes) -> Envelope:
    if not 0 <= time_ms < 2**63:
        raise LocalProtocolError(f"a post time is 0..2**63-1 ms, got {time_ms}")
    header = _HEADER.pack(VERSION, kind, tag, epoch, author, time_ms)
    unsigned = header + body
    raw = unsigned + sign(_SIGNING_CONTEXT + unsigned)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise LocalProtocolError(f"a post is at most {MAX_ENVELOPE_BYTES} bytes, this one "
                                 f"{len(raw)}")
    return Envelope(kind, tag, epoch, author, time_ms, body, raw)


def parse_envelope(raw: bytes) -> Envelope:
    """Parse ``raw`` and check its signature: what any node, member or not, does before
    storing or relaying it. Raises ``PostError`` or ``ForgedPostError``."""
    if not HEADER_BYTES + SIGNATURE_BYTES <= len(raw) <= MAX_ENVELOPE_BYTES:
        raise PostError(f"envelope of {len(raw)} bytes")
    version, kind, tag, epoch, author, time_ms = _HEADER.unpack_from(raw)
    if version != VERSION or kind not in KINDS:
        raise PostError(f"unknown envelope version {version} or kind {kind}")
    if time_ms >= 2**63:
        raise PostError("envelope time out of range")
    unsigned, signature = raw[:-SIGNATURE_BYTES], raw[-SIGNATURE_BYTES:]
    if kind == GRANT and tag != group_tag(author):
        raise ForgedPostError("a key grant not signed by its group's key")
    if not verify_signature(author, _SIGNING_CONTEXT + unsigned, signature):
        raise ForgedPostError("envelope signature does not verify")
    return Envelope(kind, tag, epoch, author, time_ms, bytes(unsigned[HEADER_BYTES:]),
                    bytes(raw))


# -- keys -----------------------------------------------------------------------------


@dataclass(slots=True)
class GroupKeys:
    """What a member holds: the group id and the epoch keys it was given."""

    group_id: bytes
    epochs: dict[int, bytes] = field(default_factory=dict)

    @property
    def tag(self) -> bytes:
        return group_tag(self.group_id)

    @property
    def epoch(self) -> int:
        """The newest epoch this member holds a key for."""
        if not self.epochs:
            raise LocalProtocolError("no epoch key for this group yet")
        return max(self.epochs)


def _x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(_RAW, _RAW_PUB)


def _sealing_key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_SEAL_CONTEXT + ephemeral + recipient + context).derive(shared)


def seal_key(recipient_static: bytes, key: bytes, context: bytes,
             random_bytes: RandomBytes) -> bytes:
    """``key`` sealed to the holder of X25519 key ``recipient_static``: an ephemeral public
    key and the ciphertext (80 bytes). ``context`` binds it to one group and epoch."""
    ephemeral = X25519PrivateKey.from_private_bytes(random_bytes(32))
    ephemeral_public = _x25519_public(ephemeral)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_static))
    except ValueError:
        raise LocalProtocolError("not a usable X25519 public key") from None
    sealing = _sealing_key(shared, ephemeral_public, recipient_static, context)
    return ephemeral_public + ChaCha20Poly1305(sealing).encrypt(bytes(NONCE_BYTES), key, None)


def open_sealed_key(identity: Identity, sealed: bytes, context: bytes) -> bytes:
    """The key in ``sealed`` (made by ``seal_key`` for ``identity``); ``TamperedPostError``
    if it does not open."""
    ephemeral_public, ciphertext = sealed[:32], sealed[32:]
    try:
        shared = identity.static_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        sealing = _sealing_key(shared, ephemeral_public, identity.static_public, context)
        return ChaCha20Poly1305(sealing).decrypt(bytes(NONCE_BYTES), ciphertext, None)
    except (ValueError, InvalidTag):
        raise TamperedPostError("a sealed epoch key does not open") from None


@dataclass(frozen=True, slots=True)
class MemberCard:
    """What the admin needs to send a member keys: its peer id and its X25519 key, endorsed
    by the peer id's signature (the same endorsement Shoal's handshake carries)."""

    peer: bytes
    static_public: bytes
    proof: bytes

    @classmethod
    def of(cls, identity: Identity) -> MemberCard:
        return cls(identity.public_key, identity.static_public, identity.static_proof)

    def encode(self) -> bytes:
        return self.peer + self.static_public + self.proof

    @classmethod
    def decode(cls, raw: bytes) -> MemberCard:
        """Parse and check a card; ``RemoteProtocolError`` if malformed or not endorsed."""
        if len(raw) != 32 + 32 + 64:
            raise RemoteProtocolError(f"member card of {len(raw)} bytes")
        card = cls(raw[:32], raw[32:64], raw[64:])
        if not verify_signature(card.peer, STATIC_PROOF_CONTEXT + card.static_public,
                                card.proof):
            raise RemoteProtocolError("member card not endorsed by its peer id")
        return card


def _grant_context(tag: bytes, epoch: int) -> bytes:
    return tag + epoch.to_bytes(4, "big")


class GroupAdmin:
    """The holder of a group's private key: makes invites, knows the members' cards, and
    starts a new epoch when a member is removed."""

    def __init__(self, seed: bytes, keys: GroupKeys, name: str = "") -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = seed
        """The group's private key (keep it as secret as an identity file)."""
        self.keys = keys
        self.name = name
        self.members: dict[bytes, MemberCard] = {}
        if keys.group_id != self._key.public_key().public_bytes(_RAW, _RAW_PUB):
            raise LocalProtocolError("the group id is not this key's public key")

    @classmethod
    def create(cls, name: str, random_bytes: RandomBytes) -> GroupAdmin:
        """A new group with a fresh key pair and a first epoch key."""
        seed = random_bytes(32)
        group_id = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
            _RAW, _RAW_PUB)
        return cls(seed, GroupKeys(group_id, {0: random_bytes(KEY_BYTES)}), name)

    def invite(self, hints: Iterable[str] = ()) -> str:
        """An invite to the group at its current epoch (anyone holding it can read and post
        until the next epoch; give it as you would the key itself)."""
        return Invite(self.keys.group_id, self.keys.epoch, self.keys.epochs[self.keys.epoch],
                      self.name, tuple(hints)).encode()

    def add_member(self, card: MemberCard) -> None:
        self.members[card.peer] = card

    def grant(self, peers: Iterable[bytes], time_ms: int,
              random_bytes: RandomBytes) -> Envelope:
        """A GRANT of the current epoch key to ``peers`` (members whose cards we hold)."""
        epoch = self.keys.epoch
        key = self.keys.epochs[epoch]
        context = _grant_context(self.keys.tag, epoch)
        entries = []
        for peer in sorted(set(peers)):
            card = self.members.get(peer)
            if card is None:
                raise LocalProtocolError(f"no member card for {peer.hex()[:16]}...")
            entries.append(peer + seal_key(card.static_public, key, context, random_bytes))
        if len(entries) > MAX_GRANTEES:
            raise LocalProtocolError(f"a grant reaches at most {MAX_GRANTEES} members")
        body = len(entries).to_bytes(2, "big") + b"".join(entries)
        return _sign_envelope(self._key.sign, GRANT, self.keys.tag, epoch,
                              self.keys.group_id, time_ms, body)

    def remove(self, peer: bytes, time_ms: int, random_bytes: RandomBytes) -> Envelope:
        """Remove a member: a new epoch whose key is granted to every other member."""
        self.members.pop(peer, None)
        self.keys.epochs[self.keys.epoch + 1] = random_bytes(KEY_BYTES)
        return self.grant(self.members, time_ms, random_bytes)


def grantees(envelope: Envelope) -> list[bytes]:
    """The peers a GRANT gives its epoch key to (``PostError`` if it is malformed)."""
    body = envelope.body
    if envelope.kind != GRANT or len(body) < 2 or \
            len(body) != 2 + int.from_bytes(body[:2], "big") * _GRANTEE_BYTES:
        raise PostError("malformed key grant")
    return [body[start : start + 32] for start in range(2, len(body), _GRANTEE_BYTES)]


def open_grant(envelope: Envelope, identity: Identity, keys: GroupKeys) -> bool:
    """Take this member's epoch key out of a GRANT into ``keys``; False if the grant has no
    copy for this member. ``PostError`` if it is malformed or for another group."""
    if envelope.kind != GRANT or envelope.author != keys.group_id:
        raise PostError("not a key grant of this group")
    body = envelope.body
    if len(body) < 2:
        raise PostError("key grant too short")
    count = int.from_bytes(body[:2], "big")
    if len(body) != 2 + count * _GRANTEE_BYTES:
        raise PostError("key grant length does not match its count")
    for start in range(2, len(body), _GRANTEE_BYTES):
        if body[start : start + 32] == identity.public_key:
            sealed = body[start + 32 : start + _GRANTEE_BYTES]
            context = _grant_context(keys.tag, envelope.epoch)
            keys.epochs[envelope.epoch] = open_sealed_key(identity, sealed, context)
            return True
    return False


# -- posts ----------------------------------------------------------------------------


def seal_post(identity: Identity, keys: GroupKeys, *, data: bytes, topic: str = "",
              parents: Iterable[bytes] = (), time_ms: int,
              random_bytes: RandomBytes) -> Envelope:
    """A post by ``identity`` encrypted under the group's newest epoch key."""
    topic_bytes = topic.encode()
    parent_ids = tuple(parents)
    if len(topic_bytes) > MAX_TOPIC_BYTES:
        raise LocalProtocolError(f"a topic is at most {MAX_TOPIC_BYTES} bytes of UTF-8")
    if len(parent_ids) > MAX_PARENTS or any(len(p) != 32 for p in parent_ids):
        raise LocalProtocolError(f"a post has at most {MAX_PARENTS} parents of 32 bytes")
    epoch = keys.epoch
    header = _HEADER.pack(VERSION, POST, keys.tag, epoch, identity.public_key, time_ms)
    plaintext = (bytes((len(topic_bytes),)) + topic_bytes + bytes((len(parent_ids),))
                 + b"".join(parent_ids) + bytes(data))
    nonce = random_bytes(NONCE_BYTES)
    body = nonce + ChaCha20Poly1305(keys.epochs[epoch]).encrypt(nonce, plaintext, header)
    return _sign_envelope(identity.sign, POST, keys.tag, epoch, identity.public_key, time_ms,
                          body)


def open_post(envelope: Envelope, keys: GroupKeys) -> Post:
    """Decrypt a post of this group. Raises ``UnknownEpochError`` without its epoch's key,
    ``TamperedPostError`` if it does not decrypt, ``PostError`` if malformed inside."""
    if envelope.kind != POST or envelope.tag != keys.tag:
        raise PostError("not a post of this group")
    key = keys.epochs.get(envelope.epoch)
    if key is None:
        raise UnknownEpochError(f"no key for epoch {envelope.epoch}")
    header = envelope.raw[:HEADER_BYTES]
    nonce, ciphertext = envelope.body[:NONCE_BYTES], envelope.body[NONCE_BYTES:]
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, header)
    except (InvalidTag, ValueError):
        raise TamperedPostError("post does not decrypt under its epoch key") from None
    # Authenticated by the author, so a malformed inside is the author's bug or malice.
    try:
        topic_end = 1 + plaintext[0]
        topic = plaintext[1:topic_end].decode()
        count = plaintext[topic_end]
        parents_end = topic_end + 1 + 32 * count
        if count > MAX_PARENTS or parents_end > len(plaintext):
            raise PostError("post parents run past its end")
    except (IndexError, UnicodeDecodeError):
        raise PostError("post contents malformed") from None
    parents = tuple(plaintext[i : i + 32] for i in range(topic_end + 1, parents_end, 32))
    return Post(envelope.id, envelope.author.hex(), topic, plaintext[parents_end:], parents,
                envelope.time_ms, envelope.epoch)


# -- invites --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invite:
    """What a new member needs: the group id, an epoch key, a name, and hints of where to
    find members (peer ids or addresses)."""

    group_id: bytes
    epoch: int
    key: bytes
    name: str = ""
    hints: tuple[str, ...] = ()

    def encode(self) -> str:
        name = self.name.encode()
        if len(name) > 255 or len(self.hints) > MAX_HINTS:
            raise LocalProtocolError(f"an invite has a name of at most 255 bytes and at most "
                                     f"{MAX_HINTS} hints")
        out = bytearray((VERSION,))
        out += self.group_id + self.epoch.to_bytes(4, "big") + self.key
        out += bytes((len(name),)) + name + bytes((len(self.hints),))
        for hint in self.hints:
            raw = hint.encode()
            if len(raw) > 255:
                raise LocalProtocolError("an invite hint is at most 255 bytes")
            out += bytes((len(raw),)) + raw
        return INVITE_PREFIX + base64.urlsafe_b64encode(bytes(out)).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Invite:
        """Parse an invite; ``LocalProtocolError`` (``EINVAL``) if it is not one."""
        text = text.strip()
        if not text.startswith(INVITE_PREFIX) or len(text) > 4096:
            raise LocalProtocolError(f"not a Shoal group invite (it starts {INVITE_PREFIX!r})")
        body = text[len(INVITE_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if raw[0] != VERSION:
                raise LocalProtocolError("a group invite of an unknown version")
            group_id, epoch, key = raw[1:33], int.from_bytes(raw[33:37], "big"), raw[37:69]
            position = 69
            name_end = position + 1 + raw[position]
            name = raw[position + 1 : name_end].decode()
            count = raw[name_end]
            position = name_end + 1
            hints = []
            for _ in range(count):
                end = position + 1 + raw[position]
                hints.append(raw[position + 1 : end].decode())
                position = end
            if position != len(raw) or len(key) != KEY_BYTES or count > MAX_HINTS:
                raise ValueError
        except (ValueError, IndexError, UnicodeDecodeError):
            raise LocalProtocolError("a damaged group invite (copy it again whole)") from None
        return cls(group_id, epoch, key, name, tuple(hints))

    def keys(self) -> GroupKeys:
        """The keys a member who joins with this invite starts with."""
        return GroupKeys(self.group_id, {self.epoch: self.key})
