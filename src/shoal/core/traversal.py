"""NAT kinds, the choice of a connection strategy, and birthday hole punching.

Theory of operation
-------------------
Every node learns its own NAT kind (``natcheck``) and tells its introducers, which pass it
on in each introduction. From both kinds each side derives the same ``Plan``:

* **direct**: one side is reachable (no NAT, or endpoint-independent mapping *and*
  filtering). Both sides dial every address they know at once.
* **simultaneous open**: both map endpoint-independently but filter. Both sides dial at
  the same moment the introduction arrives; each side's first packet opens its own NAT
  for the other's, and the handshake retransmissions get through.
* **birthday**: one side maps per destination ("hard"). The hard side opens a pool of
  sockets and sends a PUNCH from each toward the easy side's public address, creating
  ~256 mappings the easy side cannot predict. The easy side sends PUNCHes to random
  ports of the hard side's public IP, paced; each hits one of the mappings with
  probability ~256/64512, so about 250 probes (a quarter second) find one on average.
  Whichever side receives a PUNCH carrying the introduction's token dials back from the
  socket it arrived on. One punch runs at a time per node, with a cool-down after it.
* **relay**: both sides are hard. The session runs end to end through a node both are
  connected to (the introducer that introduced them), which only sees ciphertext.

Every plan also has a relay deadline: if no direct session exists by then, a relayed
session starts, and a direct session that appears later replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shoal.core.wire import Address, encode_punch

UNKNOWN = "unknown"
ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
BEHAVIOURS = (UNKNOWN, ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT)
"""RFC 4787 names of NAT mapping and filtering behaviour, in wire-code order."""

POOL_SIZE = 256
POOL_SPREAD = 0.25
"""The hard side's pool sends its PUNCHes over this many seconds."""
PROBE_RATE = 1000.0
"""PUNCH probes per second from the easy side (about 37 kB/s on the wire)."""
PROBE_TICK = 0.02
PUNCH_DURATION = 12.0
PUNCH_COOLDOWN = 3.0
PROBE_PORTS = (1024, 65535)

RELAY_AFTER_DIRECT = 3.0
RELAY_AFTER_BIRTHDAY = 9.0


@dataclass(frozen=True, slots=True)
class NatType:
    """One node's NAT, in RFC 4787 terms.

    ``varies`` is set when the public port was seen to change between destinations but
    the servers could not tell whether the address or the port made the difference.
    """

    mapping: str = UNKNOWN
    filtering: str = UNKNOWN
    public: bool = False
    """The node's own address is the public one: no NAT in the way."""
    varies: bool = False

    @property
    def hard(self) -> bool:
        """The public port depends on the destination, so a peer cannot predict it."""
        return self.varies or self.mapping in (ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT)

    @property
    def reachable(self) -> bool:
        """Anyone who knows the public address can start a session with this node."""
        return (self.public and self.filtering in (UNKNOWN, ENDPOINT_INDEPENDENT)) or (
            self.mapping == ENDPOINT_INDEPENDENT and self.filtering == ENDPOINT_INDEPENDENT
        )

    @property
    def known(self) -> bool:
        return self.public or self.mapping != UNKNOWN or self.varies

    @property
    def code(self) -> int:
        """The compact form carried in REGISTER and INTRO frames."""
        return (
            BEHAVIOURS.index(self.mapping)
            | BEHAVIOURS.index(self.filtering) << 2
            | int(self.public) << 4
            | int(self.varies) << 5
        )

    @classmethod
    def from_code(cls, code: int) -> NatType:
        return cls(
            mapping=BEHAVIOURS[code & 3],
            filtering=BEHAVIOURS[code >> 2 & 3],
            public=bool(code & 16),
            varies=bool(code & 32),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """How to reach one peer, as both sides derive it from their NAT kinds."""

    strategy: str
    """"direct", "simultaneous", "birthday" or "relay"."""
    punch_role: str | None = None
    """For "birthday": "pool" (this side is hard) or "probe" (this side is easy)."""
    relay_after: float = RELAY_AFTER_DIRECT
    """Seconds after the introduction before a relayed session is started."""


def choose_plan(mine: NatType, theirs: NatType) -> Plan:
    """The strategy for a pair of NAT kinds. Unknown kinds are treated as easy, so a
    node whose check has not finished still gets the cheap strategies at once."""
    if mine.reachable or theirs.reachable:
        return Plan("direct")
    if mine.hard and theirs.hard:
        return Plan("relay", relay_after=0.0)
    if mine.hard:
        return Plan("birthday", "pool", RELAY_AFTER_BIRTHDAY)
    if theirs.hard:
        return Plan("birthday", "probe", RELAY_AFTER_BIRTHDAY)
    return Plan("simultaneous")


class BirthdayPunch:
    """One birthday punch toward one peer, as a pacing schedule of PUNCH packets.

    ``due(now)`` returns (datagram, destination, socket id) triples to send; socket ids
    ``first_socket .. first_socket + POOL_SIZE - 1`` are the pool's (0 is the node's own).
    """

    def __init__(
        self,
        *,
        role: str,
        peer: bytes,
        target: Address,
        token: bytes,
        now: float,
        random_bytes: Callable[[int], bytes],
        first_socket: int = 1,
        pool_size: int = POOL_SIZE,
    ) -> None:
        if role not in ("pool", "probe"):
            raise ValueError(f"unknown punch role {role!r}")
        self.role = role
        self.peer = peer
        self.target = target
        self.token = token
        self.started = now
        self.deadline = now + PUNCH_DURATION
        self.sockets = range(first_socket, first_socket + pool_size) if role == "pool" else ()
        self._random = random_bytes
        self._packet = encode_punch(token)
        self._next_socket = 0
        self._next_send = now
        self._tried: set[int] = set()
        self.sent = 0
        self.finished = False

    def get_timer(self) -> float | None:
        if self.finished:
            return None
        if self.role == "pool" and self._next_socket >= len(self.sockets):
            return self.deadline
        return min(self._next_send, self.deadline)

    def due(self, now: float) -> list[tuple[bytes, Address, int]]:
        if self.finished or now >= self.deadline:
            self.finished = True
            return []
        if now < self._next_send:
            return []
        if self.role == "pool":
            return self._pool_batch(now)
        return self._probe_batch(now)

    def _pool_batch(self, now: float) -> list[tuple[bytes, Address, int]]:
        total = len(self.sockets)
        elapsed = now - self.started
        upto = total if POOL_SPREAD <= 0 else min(total, int(total * elapsed / POOL_SPREAD) + 1)
        out = [
            (self._packet, self.target, self.sockets[i]) for i in range(self._next_socket, upto)
        ]
        self._next_socket = upto
        self.sent += len(out)
        self._next_send = now + PROBE_TICK
        return out

    def _probe_batch(self, now: float) -> list[tuple[bytes, Address, int]]:
        count = max(1, round(PROBE_RATE * PROBE_TICK))
        low, high = PROBE_PORTS
        span = high - low + 1
        out = []
        host = self.target[0]
        while len(out) < count and len(self._tried) < span:
            port = low + int.from_bytes(self._random(4), "big") % span
            if port in self._tried:
                continue
            self._tried.add(port)
            out.append((self._packet, (host, port), 0))
        self.sent += len(out)
        self._next_send = now + PROBE_TICK
        return out
