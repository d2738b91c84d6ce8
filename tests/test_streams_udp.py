"""A stream between two nodes over real UDP sockets on the loopback interface."""

from __future__ import annotations

import asyncio
import random

import shoal
from shoal.identity import Identity


def test_a_stream_over_loopback_udp_arrives_intact_both_ways() -> None:
    async def main() -> tuple[bool, bool]:
        options = {"listen": "127.0.0.1:0", "lan_discovery": False}
        async with shoal.Node(Identity.generate(), **options) as alice, \
                shoal.Node(Identity.generate(), **options) as bob:
            inbox = bob.channel("copy/1")
            await alice.connect(bob.address, timeout=5)
            up = random.Random(1).randbytes(3 << 20)
            stream = await alice.open_stream(bob.peer_id, "copy/1")

            async def upload() -> None:
                await stream.write(up)
                await stream.close()

            writing = asyncio.create_task(upload())
            peer = await inbox.accept(timeout=5)
            got = bytearray()
            async for chunk in peer:
                got += chunk
            await asyncio.wait_for(writing, 30)
            await peer.write(b"thanks")
            await peer.close()
            reply = await asyncio.wait_for(stream.read(), 10)
            return bytes(got) == up, reply == b"thanks"

    assert asyncio.run(asyncio.wait_for(main(), 60)) == (True, True)
