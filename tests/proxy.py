"""A TCP proxy on loopback for fault tests: it forwards between a port of its own and a server
(PostgreSQL, Redis), and can stop forwarding without closing any socket, as a network path that
silently drops everything does, then resume.

    with Proxy(5432) as proxy:      # proxy.port forwards to 127.0.0.1:5432
        proxy.pause()                # connections stay open; nothing goes through
        proxy.resume()

While paused it accepts no new connection either (the kernel completes the handshakes, so a
client connects, sends, and waits for an answer that does not come).
"""

import selectors
import socket
import threading


class Proxy:
    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()  # set: forwarding
        self._open.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets = set()
        self.connections = 0  # accepted so far
        self._acceptor = threading.Thread(target=self._accept, name="test-proxy-accept", daemon=True)
        self._acceptor.start()

    def pause(self):
        """Stop forwarding, in both directions, on every connection; close nothing."""
        self._open.clear()

    def resume(self):
        self._open.set()

    def close(self):
        self._closed.set()
        self._open.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept(self):
        while not self._closed.is_set():
            self._open.wait()
            if self._closed.is_set():
                return
            self._listener.settimeout(0.1)
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():  # paused while waiting: handle it once resumed
                self._open.wait()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), name="test-proxy-pump", daemon=True).start()

    def _pump(self, a, b):
        peer = {a: b, b: a}
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ)
        sel.register(b, selectors.EVENT_READ)
        try:
            while not self._closed.is_set():
                if not self._open.is_set():
                    self._open.wait(0.1)  # read nothing: the data waits in the kernel's buffers
                    continue
                for key, _ in sel.select(0.1):
                    if not self._open.is_set():
                        break
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    peer[key.fileobj].sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass
            with self._lock:
                self._sockets.difference_update((a, b))
