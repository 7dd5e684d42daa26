"""The supervisor's event loop: a selector over its sockets, a heap of timers and signals as
events, with the standard library's lighter modules only.

asyncio would do the same, but importing it loads the ssl module and OpenSSL with it (asyncio
imports ssl whether or not TLS is used): about 10 MB of a process that only starts workers,
relays a few messages and waits (README, Performance: ``--workers 2`` idle RSS). Everything here
runs on one thread; callbacks must not block.

Signals are delivered through ``signal.set_wakeup_fd``: the interpreter writes each signal's
number to a socket the selector watches, and the callback registered for it runs in the loop,
never inside a signal handler.
"""

from __future__ import annotations

import heapq
import itertools
import json
import selectors
import signal
import socket
import time

TYPE_CHECKING = False  # (the typing module itself is not imported here: see the module's docstring)
if TYPE_CHECKING:
    from typing import Any, Callable

#: The most a control message may hold (gateway/control.py: a config file's text is well below).
MAX_MESSAGE_BYTES = 16 << 20


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: the wakeup socket carries the signal to the loop."""


class Loop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._signals: dict[int, Callable[[], None]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay_s), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def add_signal_handler(self, signum: int, callback: Callable[[], None]) -> None:
        self._signals[signum] = callback
        signal.signal(signum, _ignore)

    def run_until(self, done: Callable[[], bool]) -> None:
        """Dispatch events and timers until ``done()`` says so."""
        while not done():
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            for key, mask in self.selector.select(timeout):
                key.data(mask)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    timer.callback()

    def _on_wakeup(self, mask: int) -> None:
        try:
            data = self._wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            callback = self._signals.get(signum)
            if callback is not None:
                callback()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in self._signals:
            signal.signal(signum, signal.SIG_DFL)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


class LineChannel:
    """One end of a control socket (gateway/control.py): JSON messages, one per line, read and
    written without blocking. ``on_message`` gets each decoded message, ``on_close`` runs once
    when the other end goes away (or sent something that is not a message stream)."""

    def __init__(self, loop: Loop, sock: socket.socket, on_message: Callable[[dict[str, Any]], None],
                 on_close: Callable[[], None]) -> None:
        self._loop, self._sock = loop, sock
        self._on_message, self._on_close = on_message, on_close
        self._in = bytearray()
        self._out = bytearray()
        self.closed = False
        sock.setblocking(False)
        loop.selector.register(sock, selectors.EVENT_READ, self._ready)

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self._out += json.dumps(message, separators=(",", ":")).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        del self._out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
        self._loop.selector.modify(self._sock, events, self._ready)

    def _ready(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if self.closed or not mask & selectors.EVENT_READ:
            return
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._in += data
        while not self.closed:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > MAX_MESSAGE_BYTES:
                    self.close()
                return
            line = bytes(self._in[:end])
            del self._in[:end + 1]
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self._on_message(message)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.selector.unregister(self._sock)
        self._sock.close()
        self._on_close()
