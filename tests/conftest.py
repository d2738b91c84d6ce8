import os
import tempfile

# Tests that do not build their own network namespaces must never multicast on the host.
os.environ["SHOAL_NO_LAN"] = "1"
# Which app served which loopback origin is kept in the user's state dir: not the real one.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="shoal-state-")
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="shoal-cache-")
