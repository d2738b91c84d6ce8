"""Run Shoal nodes in virtual time over a simulated network.

``shoal.sim`` drives the very same ``Endpoint`` state machines as the real asyncio driver,
but delivers datagrams through a seeded model of a network that can delay, drop,
duplicate and reorder them. Identical seeds give identical runs, so a failing case can be
replayed. ``shoal.sim.run`` runs ``shoal.Node`` itself, and code written against it,
on such a network in virtual time (see ``shoal.sim.virtual``).
"""

from shoal.sim.nat import SimNat
from shoal.sim.network import LinkProfile, SimNetwork, SimNode
from shoal.sim.virtual import VirtualNetwork, VirtualTimeLoop, run

__all__ = ["LinkProfile", "SimNat", "SimNetwork", "SimNode", "VirtualNetwork",
           "VirtualTimeLoop", "run"]
