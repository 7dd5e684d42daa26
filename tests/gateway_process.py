"""The real ``python -m gateway serve`` in a child process, and its log lines as events.

Tests synchronise on what the gateway logs ("listening on", "draining: listener closed"), never on
sleeps. The process is killed (by its pid) if a test leaves it running.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

#: Generous: the machine is shared, and a worker's start imports the whole gateway.
WAIT_S = 60.0


class GatewayProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config_path: Path, *args: str, env: dict[str, str] | None = None) -> "GatewayProcess":
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", "0", *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})})
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            async with self._changed:
                self.lines.append(line.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_lines(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern`` (waits until they are logged)."""
        regex = re.compile(pattern)

        def found() -> list[re.Match[str]]:
            return [m for line in self.lines if (m := regex.search(line))]

        async def wait() -> list[re.Match[str]]:
            async with self._changed:
                while len(found()) < count:
                    if self._reader.done():
                        raise AssertionError(f"gateway exited before logging {pattern!r}:\n" + self.log())
                    await self._changed.wait()
            return found()[:count]
        try:
            return await asyncio.wait_for(wait(), WAIT_S)
        except TimeoutError:
            raise AssertionError(f"no {count} line(s) matching {pattern!r} in:\n" + self.log()) from None

    async def url(self) -> str:
        match = (await self.wait_for_lines(r"listening on (http://[0-9.]+:\d+)"))[0]
        return match.group(1)

    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), WAIT_S)
        await self._reader
        return code

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()  # our own child, by pid; its workers see their parent go and exit
            await self.process.wait()
        await self._reader


async def wait_listening(proc: subprocess.Popen[str], port: int) -> None:
    """Until a gateway started with ``subprocess.Popen`` accepts connections on ``port``."""
    for _ in range(200):  # bounded, up to ~10 s on a busy machine
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not start listening")
