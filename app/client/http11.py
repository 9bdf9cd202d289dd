"""One HTTP/1.1 exchange at a time over a connected socket: the request line and headers out; the
status, the headers and a ``Content-Length`` or chunked body back; the connection kept for the
next call. What the client needs of HTTP, and no more.

Why not the standard library's ``http.client``: importing it costs about 40 ms (it brings the
``email`` parser and ``ssl``), a third of the whole budget of a ``jit list`` (3x a bare
interpreter); httpx costs 250 ms. The server it speaks to is ours (aiohttp), so this side needs
no more of the protocol than aiohttp's answers use."""
from __future__ import annotations

import socket
from typing import Callable

MAX_LINE = 65536
MAX_HEADERS = 100


class Closed(ConnectionError):
    """The server closed the connection before it answered."""


class Response:
    def __init__(self, stream, on_done: Callable[[bool], None]) -> None:
        self._f, self._on_done = stream, on_done
        line = self._line()
        if not line:
            raise Closed("the server closed the connection")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP answer: {line[:40]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        else:
            raise ConnectionError("too many header lines in the answer")
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        length = self.headers.get("content-length")
        self._left = int(length) if length and length.isdigit() else None
        self._keep = self.headers.get("connection", "").lower() != "close" and (self._chunked or self._left is not None)
        self._buffer = b""
        self._done = False

    def _line(self) -> bytes:
        line = self._f.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ConnectionError("an answer line is too long")
        return line

    def _chunk(self) -> bytes:
        """The body's next piece; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            size = int(self._line().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self._line() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return self._finish()
            data = self._f.read(size)
            self._f.readline()  # the CRLF after the chunk
            if len(data) < size:
                raise ConnectionError("the answer ended inside a chunk")
            return data
        if self._left is None:  # until the server closes
            data = self._f.read1(65536) if hasattr(self._f, "read1") else self._f.read(65536)
            return data or self._finish()
        if self._left == 0:
            return self._finish()
        data = self._f.read(min(self._left, 65536))
        if not data:
            raise ConnectionError("the answer ended before its length")
        self._left -= len(data)
        return data

    def _finish(self) -> bytes:
        self._done = True
        self._on_done(self._keep)
        return b""

    def read(self) -> bytes:
        parts = [self._buffer]
        self._buffer = b""
        while piece := self._chunk():
            parts.append(piece)
        return b"".join(parts)

    def readline(self) -> bytes:
        while b"\n" not in self._buffer:
            piece = self._chunk()
            if not piece:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += piece
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._on_done(False)


class Connection:
    """A connection opened by ``open_socket`` on first use and kept while answers allow it."""

    def __init__(self, open_socket: Callable[[], socket.socket]) -> None:
        self._open = open_socket
        self._sock: socket.socket | None = None
        self._file = None

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Response:
        if self._sock is None:
            self._sock = self._open()
            self._file = self._sock.makefile("rb")
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        self._sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        return Response(self._file, self._answered)

    def _answered(self, keep: bool) -> None:
        if not keep:
            self.close()

    def interrupt(self) -> None:
        """From another thread: end the answer being read (its reader sees the end)."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None
