"""A TCP proxy the tests control, placed between our processes and RabbitMQ or PostgreSQL.

`cut()` drops every open connection and refuses new ones (as a network partition or a server
restart would look to a client); `restore()` lets connections through again.
"""

import contextlib
import selectors
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._open = threading.Event()
        self._open.set()
        self._stopping = False
        self.connections_made = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def url_for(self, url: str) -> str:
        """`url` with its host:port replaced by the proxy's."""
        host, port = self.target
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}", 1)

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()  # refused while cut
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections_made += 1
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select(timeout=0.5):
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
                if self._stopping:
                    return
        except OSError:
            return
        finally:
            selector.close()
            self._close_pair(client, upstream)

    def _close_pair(self, client: socket.socket, upstream: socket.socket) -> None:
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            if (client, upstream) in self._pairs:
                self._pairs.remove((client, upstream))

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self) -> None:
        """Drop every connection and refuse new ones until restore()."""
        self._open.clear()
        with self._lock:
            pairs = list(self._pairs)
        for client, upstream in pairs:
            self._close_pair(client, upstream)

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stopping = True
        self.cut()
        with contextlib.suppress(OSError):
            self.listener.close()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
