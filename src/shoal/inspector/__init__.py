"""The inspector: a running node, shown live in a browser page.

A node opens its inspector only when asked (``shoal listen --inspect``, or
``Inspector(node).start()``): a server on 127.0.0.1 that answers nothing without the
token it was started with (a wrong ``Host`` is refused too, so a web page cannot reach it
by DNS rebinding). The page reads ``Node.snapshot()`` once a second and draws it. Where
the node runs, a file in the user's state dir (readable by that user only) names the
endpoint, so that ``shoal inspect`` finds it.
"""

from shoal.inspector.endpoint import Inspector, running_inspectors

__all__ = ["Inspector", "running_inspectors"]
