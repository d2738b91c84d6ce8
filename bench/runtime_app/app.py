from shoal.runtime import expose


@expose
async def noop() -> int:
    return 0
