"""Python functions the page may call with invoke(name, args)."""

from shoal.runtime import expose


@expose
def greet(name: str) -> str:
    return f"Hello, {name}!"
