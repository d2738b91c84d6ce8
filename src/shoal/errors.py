"""Shoal's exception tree.

    ShoalError                 every error Shoal raises on purpose; has a ``code``
    ├── LocalProtocolError     the caller used the API wrongly (bad argument, closed node)
    ├── RemoteProtocolError    a peer sent something malformed, forged or out of place
    ├── IdentityError          an identity file is missing, unreadable or corrupt
    ├── DeliveryError          a message could not be delivered (timeout, peer unknown)
    └── ClosedError            the node (or session) was closed by us

``code`` is a short POSIX-like string (``EINVAL``, ``ETIMEDOUT``, ``EHOSTUNREACH``, ...)
that the CLI prints and the JS bridge passes to pages unchanged.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""

    default_code = "EIO"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message

    def __str__(self) -> str:
        return self.message


class LocalProtocolError(ShoalError):
    """The local caller asked for something the API does not allow."""

    default_code = "EINVAL"


class RemoteProtocolError(ShoalError):
    """A peer sent bytes that break the protocol. Parsers of untrusted input raise only this."""

    default_code = "EPROTO"


class IdentityError(ShoalError):
    """An identity could not be loaded or stored."""

    default_code = "EIDENTITY"


class DeliveryError(ShoalError):
    """A message was not acknowledged by its receiver."""

    default_code = "ETIMEDOUT"


class ClosedError(ShoalError):
    """The node or session was closed locally."""

    default_code = "ECLOSED"


def os_error_code(exc: OSError) -> str:
    """The POSIX name of an ``OSError`` (``EADDRINUSE``, ``EADDRNOTAVAIL``...), or EIO."""
    import errno

    return errno.errorcode.get(exc.errno or 0, "EIO")
