"""Run with: SHOAL_NO_LAN=1 python -m pytest test_app.py"""

import asyncio
from pathlib import Path

from shoal.runtime import AppHost
from shoal.runtime.testing import BridgeClient

APP = Path(__file__).parent


def test_network_id_is_a_peer_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AppHost(APP, data_dir=tmp_path, lan_discovery=False) as host, \
                BridgeClient(host) as page:
            assert len(await page.call("network.id")) == 64

    asyncio.run(scenario())
