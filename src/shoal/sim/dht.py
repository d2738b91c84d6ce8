"""Many DHT nodes on a ``SimNetwork``, for tests and ``bench/dht.py``.

    net, introducer, nodes = dht_network(100, seed=1, k=8)
    result = lookup(net, nodes[0], "find", key)
"""

from __future__ import annotations

from typing import Any

from shoal.core.config import CoreConfig
from shoal.core.services.dht import DhtService, LookupResult
from shoal.sim.network import LinkProfile, SimNetwork, SimNode

INTRODUCER = ("203.0.113.2", 7000)


def dht_network(count: int, *, seed: int = 0, k: int = 8, settle: float = 10.0,
                arrival: float = 0.05, profile: LinkProfile | None = None, **options: Any
                ) -> tuple[SimNetwork, SimNode, list[SimNode]]:
    """An introducer and ``count`` public nodes that know only it, started ``arrival``
    seconds apart (each joins the DHT as it starts: they all use it), and ``settle`` more seconds.
    ``options`` are further DHT settings (``record_ttl``...)."""
    net = SimNetwork(seed=seed, profile=profile or LinkProfile(latency=0.02))
    settings = {"dht": {"k": k, **options}}
    introducer = net.add_node(config=CoreConfig(introducer=True, nat_check=False,
                                                services=settings), address=INTRODUCER)
    config = CoreConfig(nat_check=False, services=settings)
    nodes = []
    for index in range(count):
        node = net.add_node(config=config,
                            address=(f"198.18.{index // 250}.{index % 250 + 1}", 7000))
        node.endpoint.add_introducer(INTRODUCER, net.now)
        node.endpoint.call("dht", net.now, "join")
        net.flush(node)
        nodes.append(node)
        net.run(arrival)
    net.run(settle)
    return net, introducer, nodes


def dht(node: SimNode) -> DhtService:
    service = node.endpoint.service("dht")
    assert isinstance(service, DhtService)
    return service


def lookup(net: SimNetwork, node: SimNode, operation: str, key: bytes, *,
           timeout: float = 60.0, found: list[bytes] | None = None) -> LookupResult | None:
    """Run one ``operation`` ("provide", "find" or "find_node") of ``node`` to its end
    (None if it has not ended within ``timeout`` virtual seconds); ``found`` collects
    the providers a find names, as it names them."""
    results: list[LookupResult] = []
    args: tuple[Any, ...] = (key,)
    if operation == "find":
        sink = found if found is not None else []
        args = (key, lambda peer, _addresses: sink.append(peer))
    node.endpoint.call("dht", net.now, operation, *args, on_done=results.append)
    net.flush(node)
    net.run(timeout, until=lambda: bool(results))
    return results[0] if results else None
