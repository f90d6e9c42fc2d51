"""Pieces shared by Client, AsyncClient and Worker: options, messages,
Ollama-shaped request building and result shaping."""

from __future__ import annotations

import ctypes
import json
import numbers
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from . import _pb
from ._lib import (AB_CACHE_NO_READ, AB_CACHE_NO_STORE, AB_CACHE_ON, AB_REQUEST_NON_IDEMPOTENT,
                   MSG_DIRECT, MSG_ERROR, MSG_GAP, MSG_RECEIPT, MSG_TOPIC, RequestOpts, b, lib,
                   text)
from .errors import check

Data = Union[bytes, bytearray, memoryview, str]
MSG_TYPES = {MSG_DIRECT: "direct", MSG_TOPIC: "topic", MSG_RECEIPT: "receipt", MSG_GAP: "gap",
             MSG_ERROR: "error"}


def seconds(value: Optional[float], what: str = "timeout") -> Optional[float]:
    """VALUE checked as a duration: None, or a number of seconds >= 0. One
    rule for every timeout and cache_ttl: a negative one is a mistake, not
    "the default" in one call and "at once" in another."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds or None, not %s"
                        % (what, type(value).__name__))
    if not value >= 0:  # also NaN
        raise ValueError("%s must be >= 0 seconds or None, not %r" % (what, value))
    return value


def ms(secs: Optional[float], default: int = -1, what: str = "timeout") -> int:
    """Seconds (float >= 0, None = DEFAULT) to the C API's milliseconds."""
    if seconds(secs, what) is None:
        return default
    return int(round(min(secs * 1000, 2**31 - 1)))  # inf: int(inf) was OverflowError


def make_options(endpoint: Optional[str], name: Optional[str], timeout: Optional[float],
                 heartbeat_ms: Optional[int], takeover: bool, batching: Optional[bool],
                 key: Optional[str] = None, broker_key: Optional[str] = None):
    """A new ab_options_t (the caller destroys it). KEY: a secret certificate
    file, BROKER_KEY: the broker's public key (Z85 or a certificate file), for
    a broker with --auth curve; default $AB_KEY / $AB_BROKER_KEY."""
    o = lib.ab_options_new()
    if not o:
        raise MemoryError("ab_options_new")
    try:
        if endpoint:
            check(lib.ab_options_set_endpoint(o, b(endpoint)), lambda: "bad endpoint")
        if name:
            check(lib.ab_options_set_name(o, b(name)), lambda: "bad name")
        if timeout is not None:
            check(lib.ab_options_set_timeout_ms(o, budget_ms(timeout, 0)), lambda: "bad timeout")
        if heartbeat_ms is not None:
            # ctypes wraps an int past 32 bits: 2**32 + 1000 was 1000
            hb = min(max(int(heartbeat_ms), -1), 2**31 - 1)
            check(lib.ab_options_set_heartbeat_ms(o, hb), lambda: "bad heartbeat")
        if takeover:
            check(lib.ab_options_set_takeover(o, 1))
        if batching is not None:
            check(lib.ab_options_set_batching(o, 1 if batching else 0))
        if key is not None:
            check(lib.ab_options_set_key_file(o, b(os.fspath(key))),
                  lambda: "cannot read key file %s" % key)
        if broker_key is not None:
            check(lib.ab_options_set_broker_key(o, b(os.fspath(broker_key))),
                  lambda: "bad broker key")
    except BaseException:
        lib.ab_options_destroy(ctypes.byref(ctypes.c_void_p(o)))
        raise
    return o


def budget_ms(timeout: Optional[float], default: int) -> int:
    """A request's TIMEOUT (seconds > 0, None = DEFAULT) in milliseconds, at
    least 1. A request cannot have no time: 0 was the client's default with
    options and 1 ms without (the C library's reading of 0)."""
    if seconds(timeout) is None:
        return default
    if timeout == 0:
        raise ValueError("a request's timeout must be > 0 seconds or None, not 0")
    return max(1, ms(timeout))


def request_opts(timeout: Optional[float], model: Optional[str], worker: Optional[str],
                 cache: Optional[bool], cache_ttl: Optional[float], priority,
                 idempotent: bool, keep: List[bytes]) -> RequestOpts:
    """An ab_request_opts_t; KEEP holds the encoded strings during the call.
    CACHE True marks the request cacheable, False bypasses the cache both
    ways; CACHE_TTL is in seconds."""
    # "off" or "no" are true in Python: cache="off" went as the default
    # and idempotent="no" as idempotent, each silently.
    if cache is not None and not isinstance(cache, bool):
        raise TypeError("cache must be True, False or None, not %s" % type(cache).__name__)
    if not isinstance(idempotent, bool):
        raise TypeError("idempotent must be True or False, not %s" % type(idempotent).__name__)
    o = RequestOpts()
    o.timeout_ms = budget_ms(timeout, 0)  # 0: the client's default
    if model:
        keep.append(b(model))
        o.model = keep[-1]
    if worker:
        keep.append(b(worker))
        o.worker = keep[-1]
    o.flags = 0 if idempotent else AB_REQUEST_NON_IDEMPOTENT
    if cache is True:
        o.cache_flags = AB_CACHE_ON
    elif cache is False:
        o.cache_flags = AB_CACHE_NO_READ | AB_CACHE_NO_STORE
    if seconds(cache_ttl, "cache_ttl"):
        o.cache_ttl_s = max(1, int(min(cache_ttl, 2**32 - 1)))
        o.cache_flags |= AB_CACHE_ON if cache is None else 0
    o.priority = priority_value(priority)
    return o


# The broker's lanes (docs/lanes.md): a name, or a number 0..255.
PRIORITIES = {"interactive": 3, "normal": 2, "batch": 1}


def priority_value(priority) -> int:
    """PRIORITY as the header carries it: None -> 0 (normal lane), a lane
    name, or a whole number 0..255 (ValueError outside, or for another
    name). Another type is a TypeError: int() took 1.7 as 1 and True as 1."""
    if priority is None:
        return 0
    if isinstance(priority, str):
        if priority.lower() in PRIORITIES:
            return PRIORITIES[priority.lower()]
        raise ValueError(f"unknown priority {priority!r} (interactive, normal, batch, 0..255)")
    if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
        raise TypeError("priority must be a lane name or an int 0..255, not %s"
                        % type(priority).__name__)
    value = int(priority)
    if not 0 <= value <= 255:
        raise ValueError(f"priority {value} out of range 0..255")
    return value


@dataclass
class Message:
    """A message received by a client (ab_message_t copied into Python).

    ``type`` is "direct", "topic", "receipt", "gap" or "error"; ``sender``
    the sender's agent name (or "~id"), ``target`` the name it was sent to
    or the topic; ``id`` the sender's id for it (receipt/error: the id our
    send/publish returned); ``data`` the payload; ``reply_to`` the id of
    our message it answers; ``dropped`` (gap) how many messages were lost
    (topic messages the broker dropped for a slow subscriber, or messages
    past the client's queue bounds, :class:`MessageQueue`); ``status``/``error_text`` (error) why the broker refused ours.
    """

    type: str
    sender: str = ""
    target: str = ""
    id: int = 0
    reply_to: int = 0
    data: bytes = b""
    dropped: int = 0
    status: int = 0
    error_text: str = ""
    want_receipt: bool = False
    _c: Any = field(default=None, repr=False, compare=False)

    @property
    def topic(self) -> str:
        """The topic of a topic message (same as ``target``)."""
        return self.target

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.data.decode("utf-8", "replace")

    def __del__(self) -> None:
        if self._c is not None:
            lib.ab_message_destroy(ctypes.byref(self._c))
            self._c = None


def message_from_c(p) -> Message:
    """A Message owning the C message P (from ab_client_recv)."""
    m = p.contents
    data = ctypes.string_at(m.data, m.size) if m.size else b""
    return Message(type=MSG_TYPES.get(m.type, str(m.type)), sender=text(m.sender),
                   target=text(m.target), id=m.id, reply_to=m.reply_to, data=data,
                   dropped=m.dropped, status=m.status, error_text=text(m.error_text),
                   want_receipt=bool(m.want_receipt), _c=p)


# What a client's queues hold together, as libagentbus bounds its own
# receive queue (client/message.c): messages, and bytes (payloads and names,
# with about what a Message costs Python itself).
QUEUE_MAX_MESSAGES = 100000
QUEUE_MAX_BYTES = 64 << 20
MESSAGE_RECORD_BYTES = 200


class Held:
    """What a client's queues hold together: messages, bytes, and the order
    they arrived in across the queues (``order``: a sequence number per
    message, oldest first, to the queue holding it), so that the oldest of
    them all is found in O(1) when room must be made."""

    __slots__ = ("count", "bytes", "order", "seq")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.order: "OrderedDict[int, MessageQueue]" = OrderedDict()
        self.seq = 0


class MessageQueue:
    """Messages waiting for the application: a client's direct messages, or
    one subscription's. All of a client's queues share its bounds
    (QUEUE_MAX_MESSAGES, QUEUE_MAX_BYTES), as the C library's receive
    queue, and drop as it does (client/message.c, s_deliver: one FIFO for
    every message): the newest message is always kept, and room is made by
    dropping the oldest messages the client holds, whichever queues hold
    them. Each queue that lost some returns a "gap" Message saying how many
    from its next popleft(). Before 2026-12-06 the Python queues had no
    bound; then, until the next change, a queue dropped only its own oldest,
    and a message for an empty queue while the others held the whole budget
    was dropped itself (a direct message lost behind an unread
    subscription)."""

    def __init__(self, held: Held, target: str = "") -> None:
        # (sequence number in held.order, message, its cost), oldest first
        self._q: "deque[tuple]" = deque()
        self._held = held
        self._target = target
        self._gap = 0

    def __len__(self) -> int:
        return len(self._q) + (1 if self._gap else 0)

    def __bool__(self) -> bool:
        return bool(self._q) or self._gap > 0

    @staticmethod
    def _cost(m: Message) -> int:
        return len(m.data) + len(m.sender) + len(m.target) + MESSAGE_RECORD_BYTES

    def _full(self, cost: int) -> bool:
        return (self._held.count >= QUEUE_MAX_MESSAGES or
                self._held.bytes + cost > QUEUE_MAX_BYTES)

    def _take(self) -> Message:
        """This queue's oldest, no longer held."""
        seq, m, cost = self._q.popleft()
        self._held.order.pop(seq, None)
        self._held.count -= 1
        self._held.bytes -= cost
        return m

    def append(self, m: Message) -> None:
        held = self._held
        cost = self._cost(m)
        while held.order and self._full(cost):
            _, q = held.order.popitem(last=False)  # the oldest of all the queues
            old = q._take()
            q._gap += old.dropped if old.type == "gap" else 1
        seq = held.seq
        held.seq += 1
        self._q.append((seq, m, cost))
        held.order[seq] = self
        held.count += 1
        held.bytes += cost

    def popleft(self) -> Message:
        if self._gap:
            n, self._gap = self._gap, 0
            return Message(type="gap", target=self._target, dropped=n)
        return self._take()

    def clear(self) -> None:
        while self._q:
            self._take()
        self._gap = 0


def topic_matches(pattern: str, topic: str) -> bool:
    """The broker's rule: exact match, or prefix when PATTERN ends in '.'."""
    if pattern.endswith("."):
        return topic.startswith(pattern)
    return topic == pattern


# ---------------------------------------------------------------------------
# Ollama-shaped inference (docs/ollama.md): dicts in, dicts out.

_TIMINGS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
            "eval_count", "eval_duration")


# Options with a typed field of agentbus.InferenceOptions; every other one
# crosses the bus as given (extra_json) and the worker passes it to Ollama.
_TYPED_OPTIONS = ("temperature", "seed", "num_ctx", "num_predict", "top_k", "top_p", "stop",
                  "repeat_penalty", "min_p")


def check_message(m: Any) -> None:
    """reply()'s message: another type raised AttributeError '_c'."""
    if not isinstance(m, Message):
        raise TypeError("message must be an agentbus.Message, not %s" % type(m).__name__)


def check_callable(fn: Any, name: str) -> None:
    """A handler or callback that cannot be called is a TypeError where it
    is given: it failed only when the first job or message came, inside
    the call that delivered it (poll, run, a request's wait)."""
    if fn is not None and not callable(fn):
        raise TypeError("%s must be callable or None, not %s" % (name, type(fn).__name__))


def _list(v: Any, name: str) -> list:
    """A sequence argument as a list; None is empty. A str, bytes or dict
    is refused: list() would take its characters or keys (images="abc"
    went as three one-byte images)."""
    if v is None:
        return []
    if isinstance(v, (str, bytes, bytearray, memoryview, Mapping)):
        raise TypeError("%s must be a list, not %s" % (name, type(v).__name__))
    return list(v)


def _mapping(v: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise TypeError("%s must be a dict, not %s" % (name, type(v).__name__))
    return v


def _format(format: Optional[Union[str, Mapping[str, Any]]]) -> str:
    """Ollama's format: "json", or a JSON schema (a dict) carried as its
    text, compact with sorted keys as the gateway writes it (one cache
    entry either way)."""
    if format is None or isinstance(format, (str, bytes)):
        return format or ""
    return json.dumps(_mapping(format, "format"), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False)


def _options(options: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    if not options:
        return None
    _mapping(options, "options")
    o = {k: v for k, v in options.items() if k in _TYPED_OPTIONS}
    if isinstance(o.get("stop"), str):
        o["stop"] = [o["stop"]]
    extra = {k: v for k, v in options.items() if k not in _TYPED_OPTIONS and v is not None}
    if extra:
        o["extra_json"] = json.dumps(extra, sort_keys=True, separators=(",", ":"))
    return o


def _think(think: Optional[Union[bool, str]]) -> str:
    """Ollama's think (True, False or "low", "medium", "high") as the text
    the bus carries (GenerateRequest.think); None = not given."""
    if think is None:
        return ""
    if isinstance(think, bool):
        return "true" if think else "false"
    if isinstance(think, str) and think:
        return think
    raise TypeError("think must be True, False or 'low', 'medium', 'high'")


def generate_payload(model: str, prompt: str, *, system: str = "", format: str = "",
                     options: Optional[Mapping[str, Any]] = None, stream: bool = False,
                     keep_alive: Optional[Union[str, int]] = None, raw: bool = False,
                     suffix: str = "", images: Optional[Sequence[bytes]] = None,
                     think: Optional[Union[bool, str]] = None,
                     truncate: Optional[bool] = None, shift: Optional[bool] = None,
                     logprobs: bool = False, top_logprobs: int = 0,
                     context: Optional[Sequence[int]] = None) -> bytes:
    g = {"model": model, "prompt": prompt, "system": system, "format": _format(format),
         "stream": bool(stream), "options": _options(options),
         "keep_alive": "" if keep_alive is None else str(keep_alive), "raw": raw,
         "suffix": suffix, "images": _list(images, "images"), "think": _think(think),
         "truncate": truncate, "shift": shift, "logprobs": bool(logprobs),
         "top_logprobs": top_logprobs or 0, "context": _list(context, "context")}
    return _pb.pack("inference_request", {"generate": g})


def _json_text(v: Any) -> str:
    """Tools and tool calls travel as JSON text (proto/agentbus.proto),
    compact with sorted keys as the gateway writes them."""
    if not v:
        return ""
    return json.dumps(list(v), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _message(m: Mapping[str, Any]) -> Dict[str, Any]:
    _mapping(m, "a message")
    return {"role": m.get("role", "user"), "content": m.get("content") or "",
            "images": _list(m.get("images"), "a message's images"),
            "tool_calls_json": _json_text(m.get("tool_calls")),
            "tool_name": m.get("tool_name") or "",
            "thinking": m.get("thinking") or ""}


def chat_payload(model: str, messages: Iterable[Mapping[str, Any]], *, format: str = "",
                 options: Optional[Mapping[str, Any]] = None, stream: bool = False,
                 keep_alive: Optional[Union[str, int]] = None,
                 tools: Optional[Sequence[Mapping[str, Any]]] = None,
                 think: Optional[Union[bool, str]] = None,
                 truncate: Optional[bool] = None, shift: Optional[bool] = None,
                 logprobs: bool = False, top_logprobs: int = 0) -> bytes:
    c = {"model": model, "messages": [_message(m) for m in _list(messages, "messages")],
         "format": _format(format),
         "stream": bool(stream), "options": _options(options),
         "keep_alive": "" if keep_alive is None else str(keep_alive),
         "tools_json": _json_text(tools), "think": _think(think),
         "truncate": truncate, "shift": shift, "logprobs": bool(logprobs),
         "top_logprobs": top_logprobs or 0}
    return _pb.pack("inference_request", {"chat": c})


def embed_payload(model: str, input: Union[str, Sequence[str]], *,
                  truncate: Optional[bool] = None,
                  options: Optional[Mapping[str, Any]] = None,
                  keep_alive: Optional[Union[str, int]] = None,
                  dimensions: Optional[int] = None) -> bytes:
    e = {"model": model, "input": [input] if isinstance(input, str) else list(input),
         "truncate": truncate, "options": _options(options),
         "keep_alive": "" if keep_alive is None else str(keep_alive)}
    if dimensions is not None:
        e["dimensions"] = int(dimensions)
    return _pb.pack("inference_request", {"embed": e})


def _flatten(r: Dict[str, Any]) -> Dict[str, Any]:
    t = r.pop("timings", None) or {}
    for k in _TIMINGS:
        if k in t:
            r[k] = t[k]
    if not r.get("done"):
        for k in _TIMINGS:
            r.pop(k, None)
        r.pop("done_reason", None)
    return r


def _logprobs(r: Dict[str, Any]) -> None:
    """logprobs_json (asked with logprobs=True) as Ollama's "logprobs" list."""
    lp = r.pop("logprobs_json", "")
    if lp:
        r["logprobs"] = json.loads(lp)


def generate_result(data: bytes) -> Dict[str, Any]:
    """A GenerateResponse as Ollama's /api/generate JSON object."""
    r = _flatten(_pb.unpack("generate_response", data))
    if not r.get("thinking"):  # only a reasoning model's, asked with think
        r.pop("thinking", None)
    if not r.get("context"):  # a final non-raw answer's token ids
        r.pop("context", None)
    _logprobs(r)
    return r


def chat_result(data: bytes) -> Dict[str, Any]:
    """A ChatResponse as Ollama's /api/chat JSON object."""
    r = _flatten(_pb.unpack("chat_response", data))
    m = r.get("message") or {"role": "assistant", "content": ""}
    if not m.get("images"):
        m.pop("images", None)
    calls = m.pop("tool_calls_json", "")
    if calls:  # the model's tool calls, as Ollama's message.tool_calls
        m["tool_calls"] = json.loads(calls)
    if not m.get("tool_name"):
        m.pop("tool_name", None)
    if not m.get("thinking"):
        m.pop("thinking", None)
    r["message"] = m
    _logprobs(r)
    return r


def embed_result(data: bytes) -> Dict[str, Any]:
    """An EmbedResponse as Ollama's /api/embed JSON object."""
    r = _pb.unpack("embed_response", data)
    r["embeddings"] = [e["values"] for e in r.get("embeddings", [])]
    return r


def directory_from_c(d) -> Dict[str, List[Dict[str, Any]]]:
    """An ab_directory_t as {"services": [...], "workers": [...]}."""
    services = []
    for i in range(d.n_services):
        s = d.services[i]
        services.append({k: (text(getattr(s, k)) if k == "name" else getattr(s, k))
                         for k, _ in s._fields_})
    workers = []
    for i in range(d.n_workers):
        w = d.workers[i]
        row: Dict[str, Any] = {}
        for k, _ in w._fields_:
            if k in ("n_labels", "label_keys", "label_values"):
                continue
            v = getattr(w, k)
            row[k] = text(v) if isinstance(v, bytes) or v is None and k in (
                "id", "name", "service", "health", "backend_state") else v
        row["labels"] = {text(w.label_keys[j]): text(w.label_values[j])
                         for j in range(w.n_labels)}
        workers.append(row)
    return {"services": services, "workers": workers}
