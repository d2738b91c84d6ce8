"""Run with: python -m pytest test_app.py"""

import asyncio
from pathlib import Path

from shoal.runtime import AppHost
from shoal.runtime.testing import BridgeClient

APP = Path(__file__).parent


def test_greet_and_data_dir(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AppHost(APP, data_dir=tmp_path) as host, BridgeClient(host) as page:
            assert await page.call("invoke", "greet", ["tests"]) == "Hello, tests!"
            await page.call("fs.writeFile", "visits.txt", b"1")
            assert (tmp_path / "visits.txt").read_text() == "1"

    asyncio.run(scenario())
