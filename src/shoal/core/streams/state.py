"""The named states of a stream's two sides and their transition tables.

Theory of operation
-------------------
A stream has a sending side and a receiving side, each a small state machine as in
RFC 9000 section 3. Only the tables below move them: ``SEND_TABLE`` and ``RECV_TABLE``
map (state, event) to the next state, and an event a table does not list in a state is a
bug in the caller, raised as ``LocalProtocolError``. Code that reacts to a peer checks
what the peer may do before it fires an event, and turns a peer's misstep into
``RemoteProtocolError`` itself.

Sending side::

    READY --data--> SEND --fin--> DATA_SENT --all acked--> DATA_RECVD
      |               |               |
      +---reset-------+------reset----+--> RESET_SENT --reset acked--> RESET_RECVD

Receiving side::

    RECV --fin--> SIZE_KNOWN --all received--> DATA_RECVD --all read--> DATA_READ
      |               |
      +----reset------+--> RESET_RECVD --reset read--> RESET_READ
"""

from __future__ import annotations

from enum import Enum

from shoal.errors import LocalProtocolError


class NamedState(Enum):
    """Base of state and event enums: members hash by identity (they are singletons),
    which keeps table lookups on the per-packet path cheap."""

    __hash__ = object.__hash__


class SendState(NamedState):
    READY = "ready"
    SEND = "send"
    DATA_SENT = "data_sent"
    DATA_RECVD = "data_recvd"
    RESET_SENT = "reset_sent"
    RESET_RECVD = "reset_recvd"


class SendEvent(NamedState):
    SEND_DATA = "send_data"
    """A STREAM frame without FIN was sent (or sent again)."""
    SEND_FIN = "send_fin"
    """The STREAM frame carrying FIN was sent (or sent again)."""
    ALL_ACKED = "all_acked"
    """Every byte and the FIN were acknowledged."""
    RESET = "reset"
    """The stream is abandoned (by the application, or at the peer's STOP_SENDING)."""
    RESET_ACKED = "reset_acked"


class RecvState(NamedState):
    RECV = "recv"
    SIZE_KNOWN = "size_known"
    DATA_RECVD = "data_recvd"
    DATA_READ = "data_read"
    RESET_RECVD = "reset_recvd"
    RESET_READ = "reset_read"


class RecvEvent(NamedState):
    RECV_DATA = "recv_data"
    RECV_FIN = "recv_fin"
    """The final size became known."""
    ALL_RECEIVED = "all_received"
    """Every byte up to the final size arrived."""
    ALL_READ = "all_read"
    """The application read up to the end."""
    RECV_RESET = "recv_reset"
    RESET_READ = "reset_read"
    """The application was told of the reset."""


S, SE = SendState, SendEvent
SEND_TABLE: dict[SendState, dict[SendEvent, SendState]] = {
    S.READY: {SE.SEND_DATA: S.SEND, SE.SEND_FIN: S.DATA_SENT, SE.RESET: S.RESET_SENT},
    S.SEND: {SE.SEND_DATA: S.SEND, SE.SEND_FIN: S.DATA_SENT, SE.RESET: S.RESET_SENT},
    S.DATA_SENT: {SE.SEND_DATA: S.DATA_SENT, SE.SEND_FIN: S.DATA_SENT,
                  SE.ALL_ACKED: S.DATA_RECVD, SE.RESET: S.RESET_SENT},
    S.DATA_RECVD: {},
    S.RESET_SENT: {SE.RESET_ACKED: S.RESET_RECVD},
    S.RESET_RECVD: {},
}

R, RE = RecvState, RecvEvent
_LATE = {RE.RECV_DATA: None, RE.RECV_FIN: None, RE.RECV_RESET: None}
"""Frames that may still arrive (duplicates, late copies) once a side is done."""
RECV_TABLE: dict[RecvState, dict[RecvEvent, RecvState]] = {
    R.RECV: {RE.RECV_DATA: R.RECV, RE.RECV_FIN: R.SIZE_KNOWN, RE.RECV_RESET: R.RESET_RECVD},
    R.SIZE_KNOWN: {RE.RECV_DATA: R.SIZE_KNOWN, RE.RECV_FIN: R.SIZE_KNOWN,
                   RE.ALL_RECEIVED: R.DATA_RECVD, RE.RECV_RESET: R.RESET_RECVD},
    R.DATA_RECVD: {**dict.fromkeys(_LATE, R.DATA_RECVD), RE.ALL_READ: R.DATA_READ},
    R.DATA_READ: dict.fromkeys(_LATE, R.DATA_READ),
    R.RESET_RECVD: {**dict.fromkeys(_LATE, R.RESET_RECVD), RE.RESET_READ: R.RESET_READ},
    R.RESET_READ: dict.fromkeys(_LATE, R.RESET_READ),
}
del S, SE, R, RE

SEND_DONE = (SendState.DATA_RECVD, SendState.RESET_RECVD)
RECV_DONE = (RecvState.DATA_READ, RecvState.RESET_READ)


def next_send_state(state: SendState, event: SendEvent) -> SendState:
    """The sending side's state after ``event`` in ``state``."""
    try:
        return SEND_TABLE[state][event]
    except KeyError:
        raise LocalProtocolError(f"stream send side: {event.value} in {state.value}") from None


def next_recv_state(state: RecvState, event: RecvEvent) -> RecvState:
    """The receiving side's state after ``event`` in ``state``."""
    try:
        return RECV_TABLE[state][event]
    except KeyError:
        raise LocalProtocolError(f"stream receive side: {event.value} in {state.value}") \
            from None
