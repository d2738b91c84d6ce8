import asyncio

from shoal.runtime import expose


@expose
def add(a: int, b: int) -> int:
    return a + b


@expose
def fail() -> None:
    raise ValueError("deliberate")


@expose(name="slow_echo")
async def echo_later(text: str) -> str:
    await asyncio.sleep(0.01)
    return text


@expose
def not_granted() -> str:
    return "should never run"
