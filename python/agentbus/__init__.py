"""agentbus: Python agents and workers on an agentbus broker.

A binding of libagentbus (ctypes): every message goes through the C
library, so Python peers speak exactly the protocol C peers do.

    import agentbus
    with agentbus.Client("tcp://127.0.0.1:5555") as bus:
        print(bus.request("echo", b"hello"))

Main types: :class:`Client` (synchronous), :class:`AsyncClient`
(asyncio), :class:`Worker` (serve a service from a Python function).
Errors are :class:`AgentbusError` subclasses named after the bus's status
codes (:class:`NoServiceError`, :class:`BusyError`, :class:`DeadlineError`,
...). Thread safety follows the C API: one handle (client or worker) is
used by one thread at a time; ``stop()`` is safe from any thread.
"""

from ._lib import LIB_PATH, lib as _clib
from .errors import *  # noqa: F401,F403 (one class per status code)
from .errors import AgentbusError, BY_CODE, STATUS_CODES, error
from ._common import Message
from .client import Client, Stream, Subscription
from .worker import Job, PayloadError, Worker, inference_reply
from .aio import AsyncClient, AsyncStream, AsyncSubscription

__version__ = "0.1.0"


def library_version() -> str:
    """The version of the libagentbus actually loaded (ab_version())."""
    return _clib.ab_version().decode()


__all__ = ["AsyncClient", "AsyncStream", "AsyncSubscription", "Worker", "Job", "PayloadError",
           "inference_reply", "Client", "Stream", "Subscription", "Message", "AgentbusError",
           "BY_CODE", "STATUS_CODES", "error", "library_version", "LIB_PATH", "__version__"]
__all__ += [c.__name__ for c in BY_CODE.values()]
