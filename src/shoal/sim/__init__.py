"""Run Shoal nodes in virtual time over a simulated network.

``shoal.sim`` drives the very same ``Endpoint`` state machines as the real asyncio driver,
but delivers datagrams through a seeded model of a network that can delay, drop,
duplicate and reorder them. Identical seeds give identical runs, so a failing case can be
replayed. App authors can use it to test their own protocols on top of Shoal.
"""

from shoal.sim.nat import SimNat
from shoal.sim.network import LinkProfile, SimNetwork, SimNode

__all__ = ["LinkProfile", "SimNat", "SimNetwork", "SimNode"]
