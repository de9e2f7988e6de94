"""A small client of yagna's service bus (GSB), for the PROTOCOL-LEVEL test network.

Wire format (golemfactory/ya-service-bus, `crates/proto`): every frame is a
4-byte big-endian length followed by a protobuf `Packet` whose `oneof` holds
one message (Hello, RegisterRequest, CallRequest, CallReply, Ping, ...). The
payload of a call (`CallRequest.data`, `CallReply.data`) is a serde-serialised
Rust value encoded as a flexbuffer; a typed reply is `Result<Item, Error>`,
i.e. `{"Ok": item}` or `{"Err": error}`.

The protobuf encoding is written out by hand here (a handful of string, bytes,
bool and varint fields), so no generated code or `protoc` is needed.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import struct
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flatbuffers import flexbuffers

log = logging.getLogger("golemnet.gsb")

# Packet oneof field numbers (gsb_api.proto).
HELLO, REGISTER_REQUEST, REGISTER_REPLY = 1, 2, 3
UNREGISTER_REQUEST, UNREGISTER_REPLY = 4, 5
CALL_REQUEST, CALL_REPLY = 6, 7
PING, PONG = 14, 15

CALL_REPLY_OK, CALL_REPLY_BAD_REQUEST, SERVICE_FAILURE = 0, 400, 500
FULL, PARTIAL = 0, 1


# ---------------------------------------------------------------- protobuf wire format


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One field: str/bytes as length-delimited, int/bool as varint; defaults are omitted."""
    if isinstance(value, bool | int):
        return _varint(number << 3) + _varint(int(value)) if value else b""
    if isinstance(value, str):
        value = value.encode()
    if not value:
        return b""
    return _varint(number << 3 | 2) + _varint(len(value)) + bytes(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> dict[int, Any]:
    """Decodes one flat protobuf message into {field number: raw value}."""
    out: dict[int, Any] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            out[number] = data[pos : pos + length]
            pos += length
        elif wire == 1:
            out[number] = data[pos : pos + 8]
            pos += 8
        elif wire == 5:
            out[number] = data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def _signed32(value: int) -> int:
    """Enum codes arrive as (possibly 64-bit sign-extended) varints."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def frame(kind: int, *fields: tuple[int, Any]) -> bytes:
    """A length-prefixed Packet holding message `kind` with the given fields."""
    body = b"".join(_field(number, value) for number, value in fields)
    packet = _varint(kind << 3 | 2) + _varint(len(body)) + body
    return struct.pack(">I", len(packet)) + packet


# ---------------------------------------------------------------- flexbuffers payloads


def encode(value) -> bytes:
    return bytes(flexbuffers.Dumps(value))


def decode(data: bytes):
    if not data:
        return None
    try:
        data = zlib.decompress(data)
    except zlib.error:
        pass
    return flexbuffers.Loads(bytearray(data))


def ok(item=None) -> bytes:
    return encode({"Ok": item})


def err(error) -> bytes:
    return encode({"Err": error})


class CallError(RuntimeError):
    """A GSB call failed at the bus level (bad request or service failure)."""


# ---------------------------------------------------------------- the client

Handler = Callable[[str, str, Any], bytes]
"""handler(address, caller, decoded payload) -> encoded reply payload."""


class GsbClient:
    """One connection to a yagna service bus over its unix socket (or tcp).

    Incoming calls to a registered prefix go to `handler` in a thread pool
    (a handler may block, e.g. GetExecBatchResults waits for a batch);
    outgoing calls wait for their reply.
    """

    def __init__(self, gsb_url: str, name: str, handler: Handler | None = None):
        if gsb_url.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(gsb_url[len("unix:") :])
        elif gsb_url.startswith("tcp://"):
            host, port = gsb_url[len("tcp://") :].rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)))
        else:
            raise ValueError(f"unsupported GSB_URL {gsb_url!r}")
        self.handler = handler
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[str, Future] = {}
        self._acks: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"gsb-{name}")
        self._send(frame(HELLO, (1, name), (2, "0.7.0"), (3, os.urandom(16))))
        self._reader = threading.Thread(
            target=self._read_loop, name=f"gsb-read-{name}", daemon=True
        )
        self._reader.start()

    # -- sending

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def register(self, service_id: str, timeout: float = 10.0) -> None:
        future: Future = Future()
        with self._send_lock:
            self._acks.append(future)
            self.sock.sendall(frame(REGISTER_REQUEST, (1, service_id)))
        code, message = future.result(timeout)
        if code != 0:
            raise CallError(f"register {service_id}: code {code} {message}")

    def call(self, address: str, payload, caller: str = "local", timeout: float = 30.0):
        """Calls `address` with a flexbuffer payload; returns the decoded reply."""
        request_id = f"golemnet-{os.getpid()}-{next(self._ids)}"
        future: Future = Future()
        self._pending[request_id] = future
        self._send(
            frame(CALL_REQUEST, (1, caller), (2, address), (3, request_id), (4, encode(payload)))
        )
        try:
            code, data = future.result(timeout)
        finally:
            self._pending.pop(request_id, None)
        if code != CALL_REPLY_OK:
            raise CallError(f"{address}: code {code}: {data.decode(errors='replace')}")
        return decode(data)

    # -- receiving

    def _recv_exact(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise ConnectionError("GSB connection closed")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read_loop(self) -> None:
        try:
            while not self.closed.is_set():
                (length,) = struct.unpack(">I", self._recv_exact(4))
                packet = _fields(self._recv_exact(length))
                for kind, body in packet.items():
                    self._dispatch(kind, _fields(body) if isinstance(body, bytes) else {})
        except (OSError, ConnectionError, ValueError) as error:
            if not self.closed.is_set():
                log.info("GSB connection ended: %s", error)
        finally:
            self.closed.set()
            for future in list(self._pending.values()) + self._acks:
                if not future.done():
                    future.set_exception(ConnectionError("GSB connection closed"))

    def _dispatch(self, kind: int, fields: dict[int, Any]) -> None:
        if kind == PING:
            self._send(frame(PONG))
        elif kind == REGISTER_REPLY:
            code = _signed32(fields.get(1, 0))
            message = fields.get(2, b"").decode(errors="replace")
            with self._send_lock:
                future = self._acks.pop(0) if self._acks else None
            if future is not None:
                future.set_result((code, message))
        elif kind == CALL_REPLY:
            request_id = fields.get(1, b"").decode()
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                # Partial (streamed) chunks are not used by the calls made here.
                future.set_result((_signed32(fields.get(2, 0)), fields.get(4, b"")))
        elif kind == CALL_REQUEST:
            caller = fields.get(1, b"").decode()
            address = fields.get(2, b"").decode()
            request_id = fields.get(3, b"").decode()
            no_reply = bool(fields.get(5, 0))
            self._pool.submit(
                self._serve, caller, address, request_id, fields.get(4, b""), no_reply
            )
        elif kind == HELLO:
            pass
        else:
            log.debug("ignored GSB packet %d", kind)

    def _serve(self, caller: str, address: str, request_id: str, data: bytes, no_reply: bool):
        try:
            if self.handler is None:
                raise CallError("no handler")
            reply, code = self.handler(address, caller, decode(data)), CALL_REPLY_OK
        except Exception as error:  # reported to the caller as a service failure
            log.exception("GSB handler failed for %s", address)
            reply, code = f"{type(error).__name__}: {error}".encode(), SERVICE_FAILURE
        if no_reply:
            return
        try:
            self._send(frame(CALL_REPLY, (1, request_id), (2, code), (3, FULL), (4, reply)))
        except OSError:
            pass

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
