"""Typed payloads through the library's own protobuf-c code.

libagentbus exports the protobuf-c descriptors of proto/agentbus.proto
(agentbus.pb-c.h). This module walks those descriptors to copy a Python
dict into the C message struct and back, and lets protobuf-c (loaded with
libagentbus) do the encoding: the wire format is never written in Python.

Field rules (proto3 as protoc-c 1.4 lays it out): scalars in place,
strings as char *, bytes as ProtobufCBinaryData, sub-messages as pointers,
repeated fields as a count (size_t at quantifier_offset) and an array
pointer, a one-field oneof ("has_x") as a case enum at quantifier_offset.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from ctypes import (POINTER, Structure, c_bool, c_char_p, c_double, c_float, c_int, c_int32,
                    c_int64, c_size_t, c_uint, c_uint32, c_uint64, c_void_p)
from typing import Any, Dict, List

from ._lib import lib


class FieldDesc(Structure):
    _fields_ = [("name", c_char_p), ("id", c_uint32), ("label", c_int), ("type", c_int),
                ("quantifier_offset", c_uint), ("offset", c_uint), ("descriptor", c_void_p),
                ("default_value", c_void_p), ("flags", c_uint32), ("reserved_flags", c_uint),
                ("reserved2", c_void_p), ("reserved3", c_void_p)]


class MessageDesc(Structure):
    _fields_ = [("magic", c_uint32), ("name", c_char_p), ("short_name", c_char_p),
                ("c_name", c_char_p), ("package_name", c_char_p), ("sizeof_message", c_size_t),
                ("n_fields", c_uint), ("fields", POINTER(FieldDesc)),
                ("fields_sorted_by_name", c_void_p), ("n_field_ranges", c_uint),
                ("field_ranges", c_void_p), ("message_init", c_void_p),
                ("reserved1", c_void_p), ("reserved2", c_void_p), ("reserved3", c_void_p)]


class BinaryData(Structure):
    _fields_ = [("len", c_size_t), ("data", c_void_p)]


MAGIC = 0x28AAEEF9
LABEL_REPEATED = 2
FLAG_ONEOF = 4
T_ENUM, T_STRING, T_BYTES, T_MESSAGE = 13, 14, 15, 16
# ProtobufCType -> ctypes scalar
_SCALAR = {0: c_int32, 1: c_int32, 2: c_int32, 3: c_int64, 4: c_int64, 5: c_int64,
           6: c_uint32, 7: c_uint32, 8: c_uint64, 9: c_uint64, 10: c_float, 11: c_double,
           12: c_bool, 13: c_int}
_INIT_FN = ctypes.CFUNCTYPE(None, c_void_p)

lib.protobuf_c_message_get_packed_size.restype = c_size_t
lib.protobuf_c_message_get_packed_size.argtypes = [c_void_p]
lib.protobuf_c_message_pack.restype = c_size_t
lib.protobuf_c_message_pack.argtypes = [c_void_p, c_void_p]
lib.ab_pb_unpack.restype = c_void_p
lib.ab_pb_unpack.argtypes = [c_void_p, c_size_t, c_char_p]
lib.protobuf_c_message_free_unpacked.restype = None
lib.protobuf_c_message_free_unpacked.argtypes = [c_void_p, c_void_p]

_descs: Dict[str, MessageDesc] = {}


def descriptor(c_name: str) -> MessageDesc:
    """The descriptor of agentbus.<message>, by its protobuf-c symbol stem
    ("generate_request" for agentbus__generate_request__descriptor)."""
    d = _descs.get(c_name)
    if d is None:
        d = MessageDesc.in_dll(lib, "agentbus__%s__descriptor" % c_name)
        if d.magic != MAGIC:
            raise ImportError("agentbus: protobuf-c descriptor layout mismatch")
        _descs[c_name] = d
    return d


def _desc_at(addr: int) -> MessageDesc:
    return MessageDesc.from_address(addr)


def _fields(d: MessageDesc):
    return [d.fields[i] for i in range(d.n_fields)]


class _Keep:
    """Holds the ctypes buffers a packed message points into."""

    def __init__(self) -> None:
        self.bufs: List[Any] = []

    def buf(self, obj):
        self.bufs.append(obj)
        return obj


# Integer ProtobufCTypes -> (least, greatest) value the field holds.
_RANGE = {0: (-2**31, 2**31 - 1), 1: (-2**31, 2**31 - 1), 2: (-2**31, 2**31 - 1),
          3: (-2**63, 2**63 - 1), 4: (-2**63, 2**63 - 1), 5: (-2**63, 2**63 - 1),
          6: (0, 2**32 - 1), 7: (0, 2**32 - 1), 8: (0, 2**64 - 1), 9: (0, 2**64 - 1),
          13: (-2**31, 2**31 - 1)}


def _scalar_value(ftype: int, v, name: str = "value"):
    if ftype in (T_STRING,):
        return v
    # bool("false") is True and int("7") 7: a text where the field wants a
    # number or a flag is the caller's mistake, not a value to guess.
    if isinstance(v, (str, bytes, bytearray, memoryview)) or v is None:
        raise TypeError("agentbus: %s: expected a %s, not %s" % (
            name, "bool" if ftype == 12 else "number", type(v).__name__))
    if ftype == 12:
        return bool(v)
    if ftype in (10, 11):
        return float(v)
    # ctypes would wrap a value out of range (-1 as 4294967295) and int()
    # cut a fraction (1.5 as 1): the field would carry another number.
    i = int(v)
    lo, hi = _RANGE[ftype]
    if (isinstance(v, float) and i != v) or not lo <= i <= hi:
        raise ValueError("agentbus: %s: %r is not an integer in %d..%d" % (name, v, lo, hi))
    return i


def _build(d: MessageDesc, value: Dict[str, Any], keep: _Keep) -> int:
    mem = keep.buf(ctypes.create_string_buffer(d.sizeof_message))
    base = ctypes.addressof(mem)
    _INIT_FN(d.message_init)(base)
    for f in _fields(d):
        name = f.name.decode()
        if name not in value or value[name] is None:
            continue
        v = value[name]
        if f.label == LABEL_REPEATED:
            # list("abc") is three items: a text where a list is wanted
            # would go as its characters (images="abc" as three images).
            if isinstance(v, (str, bytes, bytearray, memoryview, Mapping)):
                raise TypeError("agentbus: %s: expected a list, not %s" % (
                    name, type(v).__name__))
            items = list(v)
            c_size_t.from_address(base + f.quantifier_offset).value = len(items)
            arr = keep.buf((c_void_p * max(1, len(items)))()) if f.type in (
                T_STRING, T_MESSAGE) else None
            if f.type in (T_STRING, T_MESSAGE):
                for i, it in enumerate(items):
                    arr[i] = _one_ptr(f, it, keep, name)
            elif f.type == T_BYTES:
                arr = keep.buf((BinaryData * max(1, len(items)))())
                for i, it in enumerate(items):
                    arr[i] = _binary(it, keep, name)
            else:
                ct = _SCALAR[f.type]
                arr = keep.buf((ct * max(1, len(items)))(*[_scalar_value(f.type, x, name)
                                                            for x in items]))
            c_void_p.from_address(base + f.offset).value = ctypes.addressof(arr)
            continue
        if f.flags & FLAG_ONEOF:
            c_uint32.from_address(base + f.quantifier_offset).value = f.id
        if f.type in (T_STRING, T_MESSAGE):
            c_void_p.from_address(base + f.offset).value = _one_ptr(f, v, keep, name)
        elif f.type == T_BYTES:
            bd = BinaryData.from_address(base + f.offset)
            bd.len, bd.data = _binary_fields(v, keep, name)
        else:
            _SCALAR[f.type].from_address(base + f.offset).value = _scalar_value(f.type, v,
                                                                                name)
    return base


def _one_ptr(f: FieldDesc, v, keep: _Keep, name: str = "value") -> int:
    if f.type == T_STRING:
        # create_string_buffer(5) is 5 NULs, an empty string (and
        # create_string_buffer(10**9) a gigabyte of them); the C side reads
        # a string up to its first NUL, so "a\0b" would go as "a".
        if isinstance(v, str):
            v = v.encode()
        elif not isinstance(v, bytes):
            raise TypeError("agentbus: %s: expected str, not %s" % (name, type(v).__name__))
        if b"\0" in v:
            raise ValueError("agentbus: %s: a text cannot contain NUL" % name)
        s = keep.buf(ctypes.create_string_buffer(v))
        return ctypes.addressof(s)
    if not isinstance(v, Mapping):
        raise TypeError("agentbus: %s: expected a dict, not %s" % (name, type(v).__name__))
    return _build(_desc_at(f.descriptor), v, keep)


def _binary_fields(v, keep: _Keep, name: str = "value"):
    # bytes(5) is 5 zero bytes: a number is no payload.
    if isinstance(v, str):
        raw = v.encode()
    elif isinstance(v, (bytes, bytearray, memoryview)):
        raw = bytes(v)
    else:
        raise TypeError("agentbus: %s: expected bytes, not %s" % (name, type(v).__name__))
    s = keep.buf(ctypes.create_string_buffer(raw, len(raw) or 1))
    return len(raw), ctypes.addressof(s)


def _binary(v, keep: _Keep, name: str = "value") -> BinaryData:
    return BinaryData(*_binary_fields(v, keep, name))


def pack(c_name: str, value: Dict[str, Any]) -> bytes:
    """Encodes VALUE (a dict keyed by the proto's field names) as message
    agentbus.<c_name>. Unknown keys are ignored; None means unset."""
    keep = _Keep()
    addr = _build(descriptor(c_name), value, keep)
    n = lib.protobuf_c_message_get_packed_size(addr)
    out = ctypes.create_string_buffer(max(1, n))
    lib.protobuf_c_message_pack(addr, out)
    return out.raw[:n]


def _read(d: MessageDesc, base: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in _fields(d):
        name = f.name.decode()
        if f.label == LABEL_REPEATED:
            n = c_size_t.from_address(base + f.quantifier_offset).value
            arr = c_void_p.from_address(base + f.offset).value
            out[name] = [_read_item(f, arr, i) for i in range(n)]
            continue
        if f.flags & FLAG_ONEOF and c_uint32.from_address(
                base + f.quantifier_offset).value != f.id:
            continue
        out[name] = _read_value(f, base + f.offset)
    return out


def _read_item(f: FieldDesc, arr: int, i: int):
    if f.type in (T_STRING, T_MESSAGE):
        return _read_value(f, arr + i * ctypes.sizeof(c_void_p))
    if f.type == T_BYTES:
        return _read_value(f, arr + i * ctypes.sizeof(BinaryData))
    ct = _SCALAR[f.type]
    return ct.from_address(arr + i * ctypes.sizeof(ct)).value


def _read_value(f: FieldDesc, addr: int):
    if f.type == T_STRING:
        p = c_char_p.from_address(addr).value
        return p.decode("utf-8", "replace") if p else ""
    if f.type == T_MESSAGE:
        p = c_void_p.from_address(addr).value
        return _read(_desc_at(f.descriptor), p) if p else None
    if f.type == T_BYTES:
        bd = BinaryData.from_address(addr)
        return ctypes.string_at(bd.data, bd.len) if bd.len else b""
    return _SCALAR[f.type].from_address(addr).value


def unpack(c_name: str, data: bytes) -> Dict[str, Any]:
    """Decodes DATA as message agentbus.<c_name> into a dict (every field
    present; unset oneof fields left out). Raises ValueError if invalid or
    if it decodes to more than 4x its size plus 1 MiB (ab_pb_unpack: a
    peer's millions of empty entries would take a record each)."""
    d = descriptor(c_name)
    p = lib.ab_pb_unpack(ctypes.byref(d), len(data), data)
    if not p:
        raise ValueError("agentbus: payload is not a valid agentbus.%s, or it decodes to more "
                         "than 4x its size" % c_name)
    try:
        return _read(d, p)
    finally:
        lib.protobuf_c_message_free_unpacked(p, None)

