"""A bare-bones blocking websocket client over a plain socket, for a client that stops reading.

Client libraries keep reading into their own buffers. This one reads only when asked, and
its socket has a small fixed receive buffer, so the relay's sends really block.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

from tests.relay_process import Stream


class RawWebSocket:
    def __init__(self, port: int, path: str, receive_buffer: int = 65536) -> None:
        self.sock = socket.socket()
        # A fixed buffer size turns off the kernel's autotuning, which would otherwise
        # absorb tens of megabytes on loopback.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake failed: {head[:80]!r}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the relay")
        self._buffer += data

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def send_json(self, value: Any) -> None:
        payload = json.dumps(value).encode()
        mask = os.urandom(4)
        if len(payload) < 126:
            header = bytes([0x81, 0x80 | len(payload)])
        else:
            header = bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload))
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def read_stream(self) -> Stream:
        """Read frames until the relay's close frame; pings are ignored."""
        stream = Stream()
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._read(8))
            payload = self._read(length)
            if opcode == 0x1:
                stream.events.append(json.loads(payload))
            elif opcode == 0x8:
                (stream.close_code,) = struct.unpack(">H", payload[:2])
                stream.close_reason = payload[2:].decode()
                return stream

    def close(self) -> None:
        self.sock.close()
