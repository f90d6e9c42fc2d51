"""Loading libagentbus and declaring the C prototypes (ctypes, ABI mode).

Nothing here speaks the protocol: every call goes to the C library, which
is found through $AGENTBUS_LIB (a path: that library or an ImportError),
else, in order, a libagentbus.so next to this package, the build/ directory
of the checkout this package sits in, then the system loader (an installed
libagentbus.so.0).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import weakref
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_int,
                    c_size_t, c_uint, c_uint32, c_uint64, c_void_p)
from typing import List

ABI_MAJOR = 0  # the soname's version this binding is written against


def _candidates() -> List[str]:
    out: List[str] = []
    here = os.path.dirname(os.path.abspath(__file__))
    out.append(os.path.join(here, "libagentbus.so"))
    root = os.path.dirname(os.path.dirname(here))  # checkout: python/agentbus
    out.append(os.path.join(root, "build", "libagentbus.so"))
    out.append("libagentbus.so.%d" % ABI_MAJOR)
    found = ctypes.util.find_library("agentbus")
    if found:
        out.append(found)
    return out


def _load() -> ctypes.CDLL:
    env = os.environ.get("AGENTBUS_LIB")
    if env:
        # Only that one: a path that is wrong (a typo, a build not made
        # yet) fell through to the next place, so an ASan test run, say,
        # used the normal build's library without a word.
        try:
            return ctypes.CDLL(env)
        except OSError as e:
            raise ImportError("agentbus: cannot load $AGENTBUS_LIB: %s" % e) from None
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            continue
        try:
            return ctypes.CDLL(path)
        except OSError as e:  # try the next place
            errors.append("%s: %s" % (path, e))
    raise ImportError("agentbus: libagentbus not found (set AGENTBUS_LIB to its path); "
                      + "; ".join(errors))


lib = _load()
LIB_PATH = lib._name


class ReplyEvent(Structure):
    _fields_ = [("request_id", c_uint64), ("status", c_int), ("final", c_int),
                ("data", c_void_p), ("size", c_size_t), ("error_text", c_char_p)]


class RequestOpts(Structure):
    _fields_ = [("timeout_ms", c_int), ("model", c_char_p), ("worker", c_char_p),
                ("flags", c_uint), ("cache_flags", c_uint32), ("cache_ttl_s", c_uint32),
                ("priority", c_uint32)]


class Message(Structure):
    _fields_ = [("type", c_int), ("sender", c_char_p), ("target", c_char_p),
                ("id", c_uint64), ("reply_to", c_uint64), ("data", c_void_p),
                ("size", c_size_t), ("dropped", c_uint64), ("status", c_int),
                ("error_text", c_char_p), ("want_receipt", c_int)]


class WorkerInfo(Structure):
    _fields_ = [("id", c_char_p), ("name", c_char_p), ("service", c_char_p),
                ("health", c_char_p), ("backend_state", c_char_p),
                ("capacity", c_uint), ("in_flight", c_uint), ("free_credit", c_uint),
                ("interval_ms", c_uint), ("suspicion", c_double), ("ejections", c_uint),
                ("backoff_ms", c_uint), ("failures", c_uint), ("completed", c_uint64),
                ("redispatched", c_uint64), ("n_labels", c_size_t),
                ("label_keys", POINTER(c_char_p)), ("label_values", POINTER(c_char_p))]


class ServiceInfo(Structure):
    _fields_ = [("name", c_char_p), ("workers", c_uint), ("capacity", c_uint),
                ("free_credit", c_uint), ("queue_depth", c_uint), ("queue_max", c_uint),
                ("requests", c_uint64), ("replies", c_uint64), ("errors", c_uint64)]


class Directory(Structure):
    _fields_ = [("n_services", c_size_t), ("services", POINTER(ServiceInfo)),
                ("n_workers", c_size_t), ("workers", POINTER(WorkerInfo)),
                ("priv_", c_void_p)]


REPLY_FN = CFUNCTYPE(None, c_void_p, POINTER(ReplyEvent), c_void_p)
MESSAGE_FN = CFUNCTYPE(None, c_void_p, POINTER(Message), c_void_p)
JOB_FN = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p)
CANCEL_FN = CFUNCTYPE(None, c_void_p, c_uint64, c_int, c_void_p)

P = c_void_p  # every handle is opaque
PP = POINTER(c_void_p)


def _proto(name: str, restype, *argtypes) -> None:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)


for _n, _r, _a in [
    ("ab_version", c_char_p, ()),
    ("ab_strerror", c_char_p, (c_int,)),
    ("ab_status_name", c_char_p, (c_int,)),
    ("ab_free", None, (c_void_p,)),
    ("ab_options_new", P, ()),
    ("ab_options_destroy", None, (PP,)),
    ("ab_options_set_endpoint", c_int, (P, c_char_p)),
    ("ab_options_set_name", c_int, (P, c_char_p)),
    ("ab_options_set_heartbeat_ms", c_int, (P, c_int)),
    ("ab_options_set_timeout_ms", c_int, (P, c_int)),
    ("ab_options_set_max_payload", c_int, (P, c_size_t)),
    ("ab_options_set_takeover", c_int, (P, c_int)),
    ("ab_options_set_batching", c_int, (P, c_int)),
    ("ab_options_set_key_file", c_int, (P, c_char_p)),
    ("ab_options_set_broker_key", c_int, (P, c_char_p)),
    ("ab_client_new", c_int, (PP, P)),
    ("ab_client_destroy", None, (PP,)),
    ("ab_client_last_error", c_char_p, (P,)),
    ("ab_client_connected", c_int, (P,)),
    ("ab_client_refused", c_int, (P,)),
    ("ab_client_stop", None, (P,)),
    ("ab_client_poll", c_int, (P, c_int)),
    ("ab_client_fd", c_int, (P, POINTER(c_int))),
    ("ab_client_next_timeout_ms", c_int, (P,)),
    ("ab_client_flush", c_int, (P,)),
    ("ab_client_pending", c_size_t, (P,)),
    ("ab_client_request", c_int,
     (P, c_char_p, c_char_p, c_size_t, c_int, PP, POINTER(c_size_t))),
    ("ab_client_request_start", c_int,
     (P, c_char_p, c_char_p, c_size_t, POINTER(RequestOpts), REPLY_FN, c_void_p,
      POINTER(c_uint64))),
    ("ab_client_set_cache", c_int, (P, c_uint32, c_uint32)),
    ("ab_client_cancel", c_int, (P, c_uint64)),
    ("ab_client_on_message", c_int, (P, MESSAGE_FN, c_void_p)),
    ("ab_client_recv", c_int, (P, POINTER(POINTER(Message)), c_int)),
    ("ab_message_destroy", None, (POINTER(POINTER(Message)),)),
    ("ab_client_send", c_int, (P, c_char_p, c_char_p, c_size_t, c_int, POINTER(c_uint64))),
    ("ab_client_send_wait", c_int,
     (P, c_char_p, c_char_p, c_size_t, c_int, c_int, POINTER(c_int))),
    ("ab_client_reply", c_int, (P, POINTER(Message), c_char_p, c_size_t)),
    ("ab_client_subscribe", c_int, (P, c_char_p, c_int)),
    ("ab_client_unsubscribe", c_int, (P, c_char_p, c_int)),
    ("ab_client_publish", c_int, (P, c_char_p, c_char_p, c_size_t, POINTER(c_uint64))),
    ("ab_discover", c_int, (P, c_char_p, c_int, POINTER(POINTER(Directory)))),
    ("ab_directory_destroy", None, (POINTER(POINTER(Directory)),)),
    ("ab_client_control", c_int, (P, c_char_p, c_int, PP, POINTER(c_size_t))),
    ("ab_worker_new", c_int, (PP, P, c_char_p, c_uint)),
    ("ab_worker_destroy", None, (PP,)),
    ("ab_worker_last_error", c_char_p, (P,)),
    ("ab_worker_connected", c_int, (P,)),
    ("ab_worker_refused", c_int, (P,)),
    ("ab_worker_set_label", c_int, (P, c_char_p, c_char_p)),
    ("ab_worker_set_capacity", c_int, (P, c_uint)),
    ("ab_worker_capacity", c_uint, (P,)),
    ("ab_worker_set_backend_state", c_int, (P, c_char_p)),
    ("ab_worker_poll", c_int, (P, c_int, JOB_FN, c_void_p)),
    ("ab_job_data", c_void_p, (P, POINTER(c_size_t))),
    ("ab_job_id", c_uint64, (P,)),
    ("ab_job_timeout_ms", c_uint32, (P,)),
    ("ab_job_service", c_char_p, (P,)),
    ("ab_worker_reply_part", c_int, (P, P, c_char_p, c_size_t)),
    ("ab_worker_reply", c_int, (P, PP, c_char_p, c_size_t)),
    ("ab_worker_fail", c_int, (P, PP, c_int, c_char_p)),
    ("ab_worker_fail_begun", c_int, (P, PP, c_int, c_char_p)),
    ("ab_job_destroy", None, (PP,)),
    ("ab_worker_set_cancel_handler", c_int, (P, CANCEL_FN, c_void_p)),
    ("ab_worker_fd", c_int, (P, POINTER(c_int))),
    ("ab_worker_has_input", c_int, (P,)),
    ("ab_worker_flush", c_int, (P,)),
    ("ab_worker_stop", None, (P,)),
    ("ab_worker_shutdown", None, (P, c_int)),
    ("ab_topic_check", c_int, (c_char_p, c_int)),
    ("ab_agent_name_check", c_int, (c_char_p,)),
]:
    _proto(_n, _r, *_a)

# Constants of include/agentbus.h this binding uses.
AB_CACHE_NO_READ = 2
AB_CACHE_NO_STORE = 4
AB_CACHE_ON = 8
AB_REQUEST_NON_IDEMPOTENT = 1
AB_SEND_RECEIPT = 1
MSG_DIRECT, MSG_TOPIC, MSG_RECEIPT, MSG_GAP, MSG_ERROR = 1, 2, 3, 4, 5


def weak_method(method):
    """METHOD (bound) called through a weak reference to its object: for a
    ctypes callback an object keeps. A strong one made a reference cycle,
    so a Client or Worker dropped without close() kept its C handle, its
    connection and its registration until the cycle collector ran."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        m = ref()
        if m is not None:
            m(*args)
    return call


def _bytes(s) -> bytes:
    """Text or bytes as bytes (str is UTF-8 encoded)."""
    if isinstance(s, bytes):
        return s
    if isinstance(s, (bytearray, memoryview)):
        return bytes(s)
    return str(s).encode()


def b(s) -> bytes:
    """A string argument of the C API (a service, agent name, topic,
    endpoint, ...) as bytes, str UTF-8 encoded. The C library reads it up
    to its first NUL, so one with an embedded NUL is a ValueError: "echo\\0x"
    went to the service "echo", "bob\\0x" to the agent "bob". Another type
    than str or bytes is a TypeError: its str() went, so send(None, ...)
    filled the mailbox of an agent called "None"."""
    if not isinstance(s, (str, bytes, bytearray, memoryview)):
        raise TypeError("a name, topic or other text argument must be str or bytes, not %s"
                        % type(s).__name__)
    out = _bytes(s)
    if b"\0" in out:
        raise ValueError("%r: a name, topic or other text argument cannot contain NUL" % (s,))
    return out


def data_bytes(d) -> bytes:
    """A payload as bytes: bytes, bytearray, memoryview or str (UTF-8). Any
    other type is a TypeError: b() sent str(d), so None went as b"None"."""
    if isinstance(d, (bytes, bytearray, memoryview, str)):
        return _bytes(d)
    raise TypeError("data must be bytes, bytearray, memoryview or str, not %s"
                    % type(d).__name__)


def text(p) -> str:
    return p.decode("utf-8", "replace") if p else ""
