"""A worker's end of the control channel (gateway/control.py): its half of the two-phase reload,
reload requests to the supervisor, and broadcasts to its siblings."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Callable

from gateway.control import Channel, Message, Outcome
from gateway.control import Problem as WireProblem
from gateway.reload import Reloader, refused, summary
from gateway.runtime import Runtime

log = logging.getLogger("opengateway.worker")

#: How long a worker waits for the supervisor's answer to a reload it asked for.
RELOAD_ANSWER_S = 120.0


class WorkerControl:
    def __init__(self, channel: Channel, reloader: Reloader,
                 on_broadcast: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.channel = channel
        self.reloader = reloader
        self.on_broadcast = on_broadcast
        self._prepared: dict[int, Runtime] = {}
        self._asked: dict[int, asyncio.Future[Outcome]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        reloader.coordinator = self.ask_reload

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.channel.serve(self._handle))
        self.channel.send(Message(op="ready", generation=self.reloader.ref.current.generation))

    async def ask_reload(self) -> Outcome:
        """Ask the supervisor to reload every worker; its answer says how many took the config."""
        ask_id = next(self._ids)
        answer = self._asked[ask_id] = asyncio.get_running_loop().create_future()
        self.channel.send(Message(op="reload", id=ask_id))
        try:
            return await asyncio.wait_for(answer, RELOAD_ANSWER_S)
        except TimeoutError:
            return Outcome(status="refused", problems=[WireProblem(
                "$", "the supervisor did not answer the reload request in time")])
        finally:
            self._asked.pop(ask_id, None)

    def broadcast(self, payload: dict[str, Any]) -> None:
        self.channel.send(Message(op="broadcast", payload=payload))

    def _handle(self, message: Message) -> None:
        op = message.op
        if op in ("prepare", "apply"):
            runtime, problems = self.reloader.prepare(message.text, message.generation)
            if runtime is None:
                self.channel.send(Message(op="prepared", id=message.id, outcome=refused(problems)))
                return
            if op == "apply":  # a worker that missed a reload catches up at once
                self.channel.send(Message(op="committed", id=message.id,
                                          outcome=summary(runtime, restart=self.reloader.commit(runtime))))
                return
            self._prepared[message.id] = runtime
            self.channel.send(Message(op="prepared", id=message.id, outcome=summary(runtime)))
        elif op == "commit":
            runtime = self._prepared.pop(message.id, None)
            if runtime is None:
                log.error("the supervisor committed reload %d, which this worker did not prepare", message.id)
                return
            restart = self.reloader.commit(runtime)
            self.channel.send(Message(op="committed", id=message.id, outcome=summary(runtime, restart=restart)))
        elif op == "abort":
            self._prepared.pop(message.id, None)
        elif op == "reloaded":
            answer = self._asked.get(message.id)
            if answer is not None and not answer.done() and message.outcome is not None:
                answer.set_result(message.outcome)
        elif op == "broadcast" and message.payload is not None and self.on_broadcast is not None:
            self.on_broadcast(message.payload)

    async def close(self) -> None:
        self.channel.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
