import os

# Tests that do not build their own network namespaces must never multicast on the host.
os.environ["SHOAL_NO_LAN"] = "1"
