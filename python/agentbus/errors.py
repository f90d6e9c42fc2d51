"""Exceptions: one class per status code of the bus (AB_STATUS_LIST).

Every error raised by this package is an :class:`AgentbusError` whose
``code`` is the C status (negative int), ``name`` its stable name
(``"NO_SERVICE"``) and ``text`` the detail the broker or library gave (the
handle's last error or the reply's error text), falling back to the code's
fixed text. The class for a code is named after it in CamelCase plus
``Error``: ``NO_SERVICE`` -> :class:`NoServiceError`. Some also derive from
the matching built-in exception (``TimeoutError``, ``ConnectionError``,
``MemoryError``, ``ValueError``) so generic handlers catch them.
"""

from __future__ import annotations

import builtins
from typing import Dict, Optional, Type

from ._lib import lib, text as _text


class AgentbusError(Exception):
    """Base of every error of the bus or the library."""

    code: int = -9
    name: str = "INTERNAL"

    def __init__(self, text: str = "", code: Optional[int] = None):
        if code is not None:
            self.code = code
            self.name = _text(lib.ab_status_name(code))
        self.text = text or _text(lib.ab_strerror(self.code))
        super().__init__("%s: %s" % (self.name, self.text))


# (NAME, value) of every row of AB_STATUS_LIST but OK. tests/python checks
# this table against include/agentbus.h so the two cannot drift.
STATUS_CODES = (
    ("INVALID", -1), ("NOMEM", -2), ("TIMEOUT", -3), ("NO_SERVICE", -4), ("BUSY", -5),
    ("DEADLINE", -6), ("MALFORMED", -7), ("WORKER_LOST", -8), ("INTERNAL", -9),
    ("UNSUPPORTED_VERSION", -10), ("UNSUPPORTED", -11), ("APPLICATION", -12),
    ("DISCONNECTED", -13), ("ZMQ", -14), ("STOPPED", -15), ("NOT_FOUND", -16),
    ("FRAMES", -20),
    ("HEADER_SIZE", -21), ("MISSING_FIELD", -22), ("PAYLOAD_SIZE", -23), ("DECODE", -24),
    ("MODEL_NOT_FOUND", -40), ("BAD_REQUEST", -41), ("BACKEND_BUSY", -42), ("BACKEND", -43),
    ("CANCELLED", -44), ("NAME_TAKEN", -50), ("BAD_NAME", -51), ("TOO_LARGE", -52),
    ("NO_AGENT", -53), ("DENIED", -54), ("BATCH", -60), ("LZ4", -61),
    ("INLINE", -62),
)

_EXTRA_BASES: Dict[str, Type[BaseException]] = {
    "TIMEOUT": builtins.TimeoutError, "DEADLINE": builtins.TimeoutError,
    "DISCONNECTED": builtins.ConnectionError, "NOMEM": builtins.MemoryError,
    "INVALID": builtins.ValueError, "BAD_NAME": builtins.ValueError,
}

BY_CODE: Dict[int, Type[AgentbusError]] = {}


def class_name(name: str) -> str:
    """``NO_SERVICE`` -> ``NoServiceError``."""
    return "".join(p.capitalize() for p in name.split("_")) + "Error"


for _name, _code in STATUS_CODES:
    _bases = (AgentbusError,) + ((_EXTRA_BASES[_name],) if _name in _EXTRA_BASES else ())
    _cls = type(class_name(_name), _bases,
                {"code": _code, "name": _name, "__module__": __name__,
                 "__doc__": "Status %s (%d): %s." % (_name, _code, _text(lib.ab_strerror(_code)))})
    BY_CODE[_code] = _cls
    globals()[_cls.__name__] = _cls

# Static names for type checkers and readers (the loop above made them).
InvalidError: Type[AgentbusError] = BY_CODE[-1]
NomemError: Type[AgentbusError] = BY_CODE[-2]
TimeoutError: Type[AgentbusError] = BY_CODE[-3]  # noqa: A001 (also a builtins.TimeoutError)
NoServiceError: Type[AgentbusError] = BY_CODE[-4]
BusyError: Type[AgentbusError] = BY_CODE[-5]
DeadlineError: Type[AgentbusError] = BY_CODE[-6]
MalformedError: Type[AgentbusError] = BY_CODE[-7]
WorkerLostError: Type[AgentbusError] = BY_CODE[-8]
InternalError: Type[AgentbusError] = BY_CODE[-9]
UnsupportedVersionError: Type[AgentbusError] = BY_CODE[-10]
UnsupportedError: Type[AgentbusError] = BY_CODE[-11]
ApplicationError: Type[AgentbusError] = BY_CODE[-12]
DisconnectedError: Type[AgentbusError] = BY_CODE[-13]
ZmqError: Type[AgentbusError] = BY_CODE[-14]
StoppedError: Type[AgentbusError] = BY_CODE[-15]
NotFoundError: Type[AgentbusError] = BY_CODE[-16]
FramesError: Type[AgentbusError] = BY_CODE[-20]
HeaderSizeError: Type[AgentbusError] = BY_CODE[-21]
MissingFieldError: Type[AgentbusError] = BY_CODE[-22]
PayloadSizeError: Type[AgentbusError] = BY_CODE[-23]
DecodeError: Type[AgentbusError] = BY_CODE[-24]
ModelNotFoundError: Type[AgentbusError] = BY_CODE[-40]
BadRequestError: Type[AgentbusError] = BY_CODE[-41]
BackendBusyError: Type[AgentbusError] = BY_CODE[-42]
BackendError: Type[AgentbusError] = BY_CODE[-43]
CancelledError: Type[AgentbusError] = BY_CODE[-44]
NameTakenError: Type[AgentbusError] = BY_CODE[-50]
BadNameError: Type[AgentbusError] = BY_CODE[-51]
TooLargeError: Type[AgentbusError] = BY_CODE[-52]
NoAgentError: Type[AgentbusError] = BY_CODE[-53]
DeniedError: Type[AgentbusError] = BY_CODE[-54]
BatchError: Type[AgentbusError] = BY_CODE[-60]
Lz4Error: Type[AgentbusError] = BY_CODE[-61]
InlineError: Type[AgentbusError] = BY_CODE[-62]


def error(code: int, text: str = "") -> AgentbusError:
    """The exception for status CODE with detail TEXT."""
    cls = BY_CODE.get(code)
    if cls is None:  # a code newer than this table
        return AgentbusError(text, code)
    return cls(text)


def check(rc: int, detail=None) -> int:
    """Raises for a negative RC; DETAIL() gives the handle's last error text."""
    if rc < 0:
        raise error(rc, detail() if detail else "")
    return rc
