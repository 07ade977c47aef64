"""A WebSocket client small enough to read, for the VM terminal (RFC 6455:
the opening handshake, masked client frames, fragmented and control
frames), over a blocking socket or asyncio streams. No dependency.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import ssl
import struct
from typing import Optional, Tuple
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# The largest message read: the terminal's are a few KiB.
MAX_MESSAGE = 4 << 20

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketError(Exception):
    pass


def _target(url: str) -> Tuple[str, int, bool, str]:
    parts = urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    port = parts.port or (443 if secure else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname or "", port, secure, path


def handshake(url: str) -> Tuple[bytes, bytes]:
    """The opening request, and the `Sec-WebSocket-Accept` it must get."""
    host, port, secure, path = _target(url)
    key = base64.b64encode(os.urandom(16))
    authority = host if port == (443 if secure else 80) else f"{host}:{port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return request, accept


def check_response(head: bytes, accept: bytes) -> None:
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise WebSocketError(f"the forge refused the terminal: {lines[0]}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if headers.get("sec-websocket-accept", "").encode() != accept:
        raise WebSocketError("the terminal's WebSocket answered a wrong Sec-WebSocket-Accept")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Decoder:
    """Frames in, whole messages out: `(opcode, payload)`; pings are
    answered through `pong`."""

    def __init__(self) -> None:
        self.buffer = b""
        self.parts: list = []
        self.opcode = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next(self) -> Optional[Tuple[int, bytes]]:
        while True:
            if len(self.buffer) < 2:
                return None
            b0, b1 = self.buffer[0], self.buffer[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.buffer) < 4:
                    return None
                n, at = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif n == 127:
                if len(self.buffer) < 10:
                    return None
                n, at = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if b1 & 0x80:
                raise WebSocketError("the server masked a frame")
            if n > MAX_MESSAGE:
                raise WebSocketError(f"a frame of {n} bytes is over the limit")
            if len(self.buffer) < at + n:
                return None
            payload, self.buffer = self.buffer[at : at + n], self.buffer[at + n :]
            opcode, final = b0 & 0x0F, bool(b0 & 0x80)
            if opcode >= OP_CLOSE:
                return opcode, payload
            if opcode != OP_CONT:
                self.opcode, self.parts = opcode, []
            self.parts.append(payload)
            if sum(len(p) for p in self.parts) > MAX_MESSAGE:
                raise WebSocketError("a message is over the limit")
            if final:
                message, self.parts = b"".join(self.parts), []
                return self.opcode, message


def close_reason(payload: bytes) -> Tuple[int, str]:
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
    return 1005, ""


def _head_complete(data: bytes) -> bool:
    """Whether the handshake's answer `data` is whole; raises when it is
    too long."""
    if b"\r\n\r\n" in data:
        return True
    if len(data) > 65536:
        raise WebSocketError("the handshake's answer is too long")
    return False


def _read_head(recv) -> Tuple[bytes, bytes]:
    data = b""
    while not _head_complete(data):
        chunk = recv()
        if not chunk:
            raise WebSocketError("the connection closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class _Connection:
    """What both sockets share: frames decoded, control frames answered."""

    def _start(self, rest: bytes) -> None:
        self.decoder = Decoder()
        self.decoder.feed(rest)
        self.closed: Optional[Tuple[int, str]] = None

    def _step(self) -> Tuple[Optional[bytes], Optional[Tuple[int, bytes]], bool]:
        """One decoded frame's outcome: a frame to send back, a data
        message, and whether more input is needed first."""
        message = self.decoder.next()
        if message is None:
            return None, None, True
        opcode, payload = message
        if opcode == OP_PING:
            return frame(OP_PONG, payload), None, False
        if opcode == OP_CLOSE:
            self.closed = close_reason(payload)
            return frame(OP_CLOSE, payload[:2]), None, False
        if opcode in (OP_TEXT, OP_BINARY):
            return None, (opcode, payload), False
        return None, None, False

    def _ended(self, data: bytes) -> bool:
        if not data:
            self.closed = (1006, "the connection closed")
            return True
        self.decoder.feed(data)
        return False


class SyncSocket(_Connection):
    """A WebSocket over a blocking socket."""

    def __init__(self, url: str, timeout: float = 60.0):
        host, port, secure, _ = _target(url)
        sock = socket.create_connection((host, port), timeout=timeout)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        try:
            request, accept = handshake(url)
            sock.sendall(request)
            head, rest = _read_head(lambda: sock.recv(4096))
            check_response(head, accept)
        except BaseException:
            sock.close()
            raise
        self._start(rest)

    def send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(frame(opcode, payload))

    def receive(self) -> Optional[Tuple[int, bytes]]:
        """The next data message, or None once the socket is closed."""
        while self.closed is None:
            reply, message, need = self._step()
            if reply is not None:
                try:
                    self.sock.sendall(reply)
                except OSError:
                    pass
            if message is not None:
                return message
            if need and self._ended(self.sock.recv(65536)):
                break
        return None

    def close(self) -> None:
        try:
            self.send(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


class AsyncSocket(_Connection):
    """A WebSocket over asyncio streams."""

    @classmethod
    async def connect(cls, url: str) -> "AsyncSocket":
        host, port, secure, _ = _target(url)
        context = ssl.create_default_context() if secure else None
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            request, accept = handshake(url)
            writer.write(request)
            await writer.drain()
            data = b""
            while not _head_complete(data):
                chunk = await reader.read(4096)
                if not chunk:
                    raise WebSocketError("the connection closed during the handshake")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            check_response(head, accept)
        except BaseException:
            writer.close()
            raise
        self = cls()
        self.reader, self.writer = reader, writer
        self._start(rest)
        return self

    async def send(self, opcode: int, payload: bytes) -> None:
        self.writer.write(frame(opcode, payload))
        await self.writer.drain()

    async def receive(self) -> Optional[Tuple[int, bytes]]:
        """The next data message, or None once the socket is closed."""
        while self.closed is None:
            reply, message, need = self._step()
            if reply is not None:
                try:
                    self.writer.write(reply)
                    await self.writer.drain()
                except OSError:
                    pass
            if message is not None:
                return message
            if need and self._ended(await self.reader.read(65536)):
                break
        return None

    async def close(self) -> None:
        try:
            await self.send(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.writer.close()
