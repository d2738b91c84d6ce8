"""The DHT's routing table (k-buckets) and the provider records a node stores.

A node's id is ``node_id(peer)``: a hash of its public key, so its place in the id
space follows from its key. Keys are free to make, so ids are not scarce: the table only
bounds how much any one of them can cost (k contacts a bucket, long-lived ones kept over
newcomers as Kademlia does), and the record store bounds what one peer may have it hold.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass

from shoal.core.dht.wire import encode_entry
from shoal.core.wire import Address

ID_DOMAIN = b"shoal/dht-node/1"


def node_id(peer: bytes) -> int:
    """The DHT id of the node whose public key is ``peer``, as an integer."""
    return int.from_bytes(hashlib.sha256(ID_DOMAIN + peer).digest(), "big")


def key_id(key: bytes) -> int:
    return int.from_bytes(key, "big")


@dataclass(slots=True, eq=False)
class Contact:
    peer: bytes
    id: int
    addresses: tuple[Address, ...]
    seen: float
    wire: bytes = b""
    """The contact as an answer's entry."""

    def __post_init__(self) -> None:
        self.wire = encode_entry(self.peer, self.addresses)


class RoutingTable:
    """256 buckets of at most ``k`` contacts, the longest known first; a full bucket keeps
    its contacts and holds newcomers aside (up to ``k``) until one of them fails."""

    def __init__(self, me: bytes, k: int) -> None:
        self.me = node_id(me)
        self.k = k
        self.buckets: list[list[Contact]] = [[] for _ in range(256)]
        self.spare: list[list[Contact]] = [[] for _ in range(256)]
        self.contacts: dict[bytes, Contact] = {}

    def __len__(self) -> int:
        return len(self.contacts)

    def bucket_of(self, id_: int) -> int:
        """The index of the bucket ``id_`` belongs in (255: the far half of the space)."""
        return max(0, (self.me ^ id_).bit_length() - 1)

    def seen(self, peer: bytes, addresses: tuple[Address, ...], now: float) -> bool:
        """``peer`` answered or asked: keep it (or hold it aside if its bucket is full).
        Returns whether it is in the table."""
        contact = self.contacts.get(peer)
        if contact is not None:
            contact.seen = now
            if addresses and addresses != contact.addresses:
                contact.addresses = addresses
                contact.wire = encode_entry(peer, addresses)
            bucket = self.buckets[self.bucket_of(contact.id)]
            bucket.remove(contact)
            bucket.append(contact)
            return True
        id_ = node_id(peer)
        if id_ == self.me:
            return False
        index = self.bucket_of(id_)
        bucket = self.buckets[index]
        if len(bucket) < self.k:
            contact = Contact(peer, id_, addresses, now)
            bucket.append(contact)
            self.contacts[peer] = contact
            return True
        spare = self.spare[index]
        for held in spare:
            if held.peer == peer:
                spare.remove(held)
                break
        spare.append(Contact(peer, id_, addresses, now))
        del spare[: max(0, len(spare) - self.k)]
        return False

    def failed(self, peer: bytes) -> None:
        """``peer`` did not answer: drop it, and take the newest held-aside contact."""
        contact = self.contacts.pop(peer, None)
        if contact is None:
            return
        index = self.bucket_of(contact.id)
        self.buckets[index].remove(contact)
        if self.spare[index]:
            newcomer = self.spare[index].pop()
            self.buckets[index].append(newcomer)
            self.contacts[newcomer.peer] = newcomer

    def closest(self, target: int, count: int, exclude: bytes | None = None) -> list[Contact]:
        """The ``count`` contacts nearest ``target`` (XOR distance)."""
        return heapq.nsmallest(count, (c for c in self.contacts.values() if c.peer != exclude),
                               key=lambda c: c.id ^ target)


@dataclass(slots=True, eq=False)
class Record:
    addresses: tuple[Address, ...]
    expires: float
    wire: bytes
    """The provider as an answer's entry."""


class RecordStore:
    """Provider records: key -> provider -> addresses, each until it expires. At most
    ``per_peer`` records of one provider, ``per_key`` providers of one key, ``total`` in
    all; when full, the provider holding the most loses its oldest record."""

    def __init__(self, *, per_peer: int, per_key: int, total: int) -> None:
        self.per_peer = per_peer
        self.per_key = per_key
        self.total = total
        self.records: dict[bytes, dict[bytes, Record]] = {}
        self.by_peer: dict[bytes, dict[bytes, None]] = {}
        """Each provider's keys, the oldest stored first."""
        self.count = 0

    def add(self, key: bytes, peer: bytes, addresses: tuple[Address, ...], expires: float
            ) -> str | None:
        """Store (or refresh) a record; returns why it was refused, if it was."""
        providers = self.records.get(key)
        if providers is None or peer not in providers:
            keys = self.by_peer.get(peer)
            if keys is not None and len(keys) >= self.per_peer:
                return "per_peer"
            if providers is not None and len(providers) >= self.per_key:
                return "per_key"
            if self.count >= self.total:
                self._evict()
            self.count += 1
        keys = self.by_peer.setdefault(peer, {})
        keys.pop(key, None)
        keys[key] = None  # the newest stored last
        self.records.setdefault(key, {})[peer] = Record(addresses, expires,
                                                        encode_entry(peer, addresses))
        return None

    def _evict(self) -> None:
        peer = max(self.by_peer, key=lambda p: len(self.by_peer[p]))
        self.remove(next(iter(self.by_peer[peer])), peer)

    def remove(self, key: bytes, peer: bytes) -> None:
        providers = self.records.get(key)
        if providers is None or providers.pop(peer, None) is None:
            return
        if not providers:
            del self.records[key]
        keys = self.by_peer[peer]
        del keys[key]
        if not keys:
            del self.by_peer[peer]
        self.count -= 1

    def providers(self, key: bytes, now: float) -> list[tuple[bytes, Record]]:
        """Unexpired providers of ``key``."""
        return [(p, r) for p, r in self.records.get(key, {}).items() if r.expires > now]

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many."""
        gone = [(key, peer) for key, providers in self.records.items()
                for peer, record in providers.items() if record.expires <= now]
        for key, peer in gone:
            self.remove(key, peer)
        return len(gone)
