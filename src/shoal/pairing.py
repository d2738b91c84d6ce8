"""Pairing: two people swap verified peer ids by saying a short code to each other.

One side asks for a code (``7-amber-otter``): a nameplate (the number) that tells the
introducer which two requests belong together, and two words that only the two people
know. Both sides run SPAKE2 with the whole code as the password, through the
introducer, which relays the two opaque PAKE messages under a hash of the nameplate and
forgets them. Each side then proves to the other, over a direct Shoal session (whose
handshake proves the peer id), that it derived the same key: an introducer, or anyone
who guesses codes, learns nothing and cannot put itself in between without knowing the
words. A nameplate is used once, so a wrong code costs its one try and fails cleanly.

Messages are JSON objects on the ``shoal/pair/1`` channel: to the introducer
``{"op": "open" | "join", "slot", "msg"}``; from it ``opened``, ``taken``, ``unknown``,
``busy`` or ``{"op": "peer", "peer", "msg"}``; between the two sides
``{"op": "confirm", "mac"}`` or ``{"op": "mismatch"}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal.errors import DeliveryError, LocalProtocolError, ShoalError
from shoal.identity import peer_id_to_bytes

CHANNEL = "shoal/pair/1"
_PAKE_ID = b"shoal pairing v1"
_SLOT_CONTEXT = b"shoal pairing nameplate v1"
_CONFIRM_CONTEXT = b"shoal pairing confirm v1"
NAMEPLATES = 999
SLOT_LIFETIME = 600.0
"""Seconds an introducer keeps an opened code waiting for the other side."""
MAX_SLOTS = 10_000
MAX_SLOTS_PER_PEER = 4
MAX_MESSAGE = 512

WORDS = (
    "acorn", "amber", "anchor", "apple", "arrow", "aspen", "autumn", "badger", "bamboo",
    "banjo", "basil", "beacon", "beaver", "berry", "birch", "bison", "blossom", "bramble",
    "breeze", "brook", "button", "cactus", "camel", "canoe", "canyon", "cedar", "cello",
    "cherry", "chess", "cider", "cinder", "clover", "cobalt", "comet", "copper", "coral",
    "cotton", "cougar", "coyote", "crane", "cricket", "crystal", "cypress", "daisy",
    "dawn", "delta", "desert", "dingo", "dolphin", "dove", "dragon", "drum", "dune",
    "eagle", "ember", "falcon", "fern", "ferry", "fiddle", "finch", "fjord", "flint",
    "forest", "fossil", "fox", "galaxy", "garnet", "gecko", "ginger", "glacier", "gopher",
    "granite", "grape", "gull", "harbor", "hazel", "heron", "hickory", "honey", "hornet",
    "husky", "ibis", "indigo", "iris", "island", "ivory", "jade", "jaguar", "jasmine",
    "jelly", "juniper", "kayak", "kelp", "kestrel", "kettle", "kiwi", "koala", "lagoon",
    "lantern", "larch", "lemon", "lemur", "lilac", "lily", "linen", "lizard", "llama",
    "lotus", "lynx", "magnet", "mango", "maple", "marble", "marsh", "meadow", "melon",
    "mint", "mole", "moose", "mosaic", "moss", "nectar", "newt", "nickel", "nutmeg",
    "oak", "oasis", "ocean", "olive", "onyx", "opal", "orchid", "osprey", "otter", "owl",
    "paddle", "panda", "papaya", "parrot", "peach", "pebble", "pelican", "pepper",
    "piano", "pine", "planet", "plum", "pony", "poppy", "prairie", "puffin", "quail",
    "quartz", "quill", "rabbit", "radish", "raven", "reef", "river", "robin", "rocket",
    "rose", "ruby", "saffron", "sage", "salmon", "sapphire", "scarlet", "seal", "sequoia",
    "shadow", "silver", "sparrow", "spruce", "squid", "starling", "stone", "summit",
    "swan", "tango", "thistle", "thunder", "tiger", "timber", "topaz", "toucan", "tulip",
    "tundra", "turtle", "umber", "valley", "velvet", "violet", "viper", "walnut",
    "walrus", "willow", "wombat", "wren", "yak", "yarrow", "zebra", "zephyr", "zinc",
)
"""Words of codes: common, easy to say and to spell."""


class PairingError(ShoalError):
    """Pairing did not complete: a wrong code (``EACCES``), nobody waiting with it
    (``ENOENT``), no introducer (``ENETUNREACH``), or no answer in time (``ETIMEDOUT``)."""

    default_code = "EACCES"


def new_code() -> str:
    """A fresh code: a nameplate and two words, e.g. ``7-amber-otter``."""
    return "-".join([str(secrets.randbelow(NAMEPLATES) + 1),
                     secrets.choice(WORDS), secrets.choice(WORDS)])


def parse_code(text: str) -> tuple[str, str]:
    """``(nameplate, code)`` for a code as typed (spaces, case); ``LocalProtocolError``
    ``EINVAL`` if it is not one."""
    code = "-".join(text.strip().lower().replace(" ", "-").split("-"))
    parts = code.split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not all(p.isalpha() for p in parts[1:]):
        raise LocalProtocolError(f"not a pairing code (like 7-amber-otter): {text!r}")
    return parts[0], code


def slot_of(nameplate: str) -> str:
    """The introducer's key for a nameplate: a hash, so it keeps no codes."""
    return hashlib.sha256(_SLOT_CONTEXT + nameplate.encode()).hexdigest()[:32]


def _encode(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields).encode()


def _decode(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_MESSAGE:
        return None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        body = json.loads(data)
        if isinstance(body, dict) and isinstance(body.get("op"), str):
            return body
    return None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A reply nobody awaits: its failure (the peer left) is of no interest."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class _Slot:
    peer: str
    message: str
    expires: float


class PairingRelay:
    """The introducer's side: matches an ``open`` and a ``join`` of one nameplate and
    hands each side the other's PAKE message and peer id. It sees hashes of nameplates
    and opaque messages only."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.channel = node.channel(CHANNEL)
        self.slots: dict[str, _Slot] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> PairingRelay:
        self._task = asyncio.get_running_loop().create_task(self._serve())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ShoalError):
                await self._task
        self.channel.close()

    async def _serve(self) -> None:
        with contextlib.suppress(ShoalError):  # the node closed
            async for message in self.channel:
                body = _decode(message.data)
                if body is not None:
                    self._handle(message.sender, body)

    def _reply(self, to: str, **fields: Any) -> None:
        self.channel.send_nowait(to, _encode(fields)).add_done_callback(_retrieve)

    def _handle(self, sender: str, body: dict[str, Any]) -> None:
        now = time.monotonic()
        for key in [k for k, slot in self.slots.items() if slot.expires <= now]:
            del self.slots[key]
        slot, pake = body.get("slot"), body.get("msg")
        if body["op"] not in ("open", "join") or not isinstance(slot, str) or \
                len(slot) != 32 or not isinstance(pake, str) or len(pake) > 100:
            return
        waiting = self.slots.get(slot)
        if body["op"] == "open":
            mine = sum(1 for s in self.slots.values() if s.peer == sender)
            if waiting is not None:
                self._reply(sender, op="taken")
            elif mine >= MAX_SLOTS_PER_PEER or len(self.slots) >= MAX_SLOTS:
                self._reply(sender, op="busy")
            else:
                self.slots[slot] = _Slot(sender, pake, now + SLOT_LIFETIME)
                self._reply(sender, op="opened")
            return
        if waiting is None or waiting.peer == sender:
            self._reply(sender, op="unknown")
            return
        del self.slots[slot]  # one try per code
        self._reply(sender, op="peer", peer=waiting.peer, msg=waiting.message)
        self._reply(waiting.peer, op="peer", peer=sender, msg=pake)


async def pair(node: Any, code: str | None = None, *, timeout: float = SLOT_LIFETIME,
               on_code: Callable[[str], None] | None = None) -> str:
    """Pair through the node's introducer: with no ``code``, make one (given to
    ``on_code`` once the introducer holds it) and wait for the other side; with one,
    join the side that made it. Returns the other side's peer id, verified; raises
    ``PairingError``."""
    if code is not None:
        code = parse_code(code)[1]
    introducer = next((p.peer_id for p in node.peers() if p.introducer and p.connected), None)
    if introducer is None:
        raise PairingError("pairing needs an introducer this node is connected to "
                           "(--introducer HOST:PORT)", code="ENETUNREACH")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (timeout if code is None else min(timeout, 60.0))
    channel = node.channel(CHANNEL)
    try:
        return await _pair(node, channel, introducer, code, deadline, on_code)
    finally:
        channel.close()


async def _pair(node: Any, channel: Any, introducer: str, code: str | None,
                deadline: float, on_code: Callable[[str], None] | None) -> str:
    from spake2 import SPAKE2_Symmetric

    loop = asyncio.get_running_loop()

    async def next_message(accept: Callable[[str, dict[str, Any]], bool]
                           ) -> tuple[str, dict[str, Any]]:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise PairingError("the other side did not come in time",
                                   code="ETIMEDOUT")
            try:
                message = await channel.receive(timeout=left)
            except TimeoutError:
                continue
            body = _decode(message.data)
            if body is not None and accept(message.sender, body):
                return message.sender, body

    def from_introducer(sender: str, body: dict[str, Any]) -> bool:
        return sender == introducer

    async def ask(op: str, slot: str, pake: bytes) -> dict[str, Any]:
        request = {"op": op, "slot": slot, "msg": base64.b64encode(pake).decode()}
        try:
            await channel.send(introducer, _encode(request), timeout=10)
        except DeliveryError as exc:
            raise PairingError(f"the introducer did not take the request: {exc.message}",
                               code=exc.code) from None
        return (await next_message(from_introducer))[1]

    while True:
        made = new_code() if code is None else code
        spake = SPAKE2_Symmetric(made.encode(), idSymmetric=_PAKE_ID)
        answer = await ask("open" if code is None else "join", slot_of(parse_code(made)[0]),
                           spake.start())
        if answer["op"] == "taken" and code is None:
            continue  # another pairing holds this nameplate: draw again
        break
    if answer["op"] == "unknown":
        raise PairingError(f"nobody is waiting with the code {made} (a code works once)",
                           code="ENOENT")
    if answer["op"] == "busy":
        raise PairingError("the introducer holds too many codes; try again later",
                           code="EBUSY")
    if answer["op"] == "opened":
        if on_code is not None:
            on_code(made)
        _, answer = await next_message(
            lambda sender, body: from_introducer(sender, body) and body["op"] == "peer")
    other = answer.get("peer")
    if answer["op"] != "peer" or not isinstance(other, str) or not _is_peer_id(other):
        raise PairingError(f"unexpected answer from the introducer: {answer['op']!r}",
                           code="EPROTO")
    try:
        key = spake.finish(base64.b64decode(answer.get("msg", ""), validate=True))
    except Exception:  # a malformed or reflected message: no shared key
        key = secrets.token_bytes(32)

    def mac(first: str, second: str) -> str:
        return hmac.new(key, _CONFIRM_CONTEXT + bytes.fromhex(first) + bytes.fromhex(second),
                        hashlib.sha256).hexdigest()

    try:
        await channel.send(other, _encode({"op": "confirm", "mac": mac(node.peer_id, other)}),
                           timeout=max(1.0, min(30.0, deadline - loop.time())))
    except DeliveryError as exc:
        raise PairingError(f"could not reach the other side: {exc.message}",
                           code=exc.code) from None
    _, body = await next_message(lambda sender, body: sender == other)
    expected = mac(other, node.peer_id)
    if body["op"] == "confirm" and isinstance(body.get("mac"), str) and \
            hmac.compare_digest(body["mac"], expected):
        return other
    if body["op"] != "mismatch":
        channel.send_nowait(other, _encode({"op": "mismatch"})).add_done_callback(
            _retrieve)
    raise PairingError("the code did not match: nothing was paired (check the code and "
                       "start again with a new one)", code="EACCES")


def _is_peer_id(text: str) -> bool:
    try:
        peer_id_to_bytes(text)
    except ShoalError:
        return False
    return True
