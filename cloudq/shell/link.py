"""The master as the shell sees it: in this process, or over RPC. The shell touches nothing else.

`LocalLink` is the master's own shell: commands call the core through a Gate, and leaving the
shell stops the master. `RemoteLink` is `cloudq shell --master HOST:PORT`: each command line is
sent to the master, which runs it through the same registry (as `cloudq ctl` does), and leaving
the shell leaves the master running. Both answer the watcher's `feed` with the same JSON
(master/views.py, Views.feed), so the toolbar, completion and notices are the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from cloudq import defaults
from cloudq.commands.gate import Gate, Guard
from cloudq.commands.registry import Command, Context, Result, files_to_send, run


class MasterLink(Protocol):
    address: str
    local: bool  # the master runs in this process: leaving the shell stops it

    def run(self, cmd: Command, args: argparse.Namespace, argv: list[str], guard: Guard,
            on_note: Callable[[str], None] | None = None) -> Result:
        """Runs one parsed command line; `guard` says whether it began a change."""
        ...

    def feed(self, after: int | None, workers: bool = False) -> dict[str, Any]:
        """The summary, the moves since `after`, and the worker views if asked (Views.feed)."""
        ...

    def running(self, limit: int) -> tuple[int, list[str]]:
        """How many tasks are running or assigned, and the ids of the first `limit` running."""
        ...

    def close(self) -> None: ...


class LocalLink:
    local = True

    def __init__(self, master: Any, address: str) -> None:
        self.master = master
        self.address = address

    def run(self, cmd: Command, args: argparse.Namespace, argv: list[str], guard: Guard,
            on_note: Callable[[str], None] | None = None) -> Result:
        ctx = Context(Gate(self.master, guard), stop=guard.stop, on_note=on_note)
        return run(ctx, cmd, args)

    def feed(self, after: int | None, workers: bool = False) -> dict[str, Any]:
        return self.master.feed(after, workers)

    def running(self, limit: int) -> tuple[int, list[str]]:
        counts = self.master.counts()
        busy = counts.get("running", 0) + counts.get("assigned", 0)
        return busy, self.master.listing_ids("running", limit) if busy else []

    def close(self) -> None:
        pass


class RemoteLink:
    """Connections to a master running as a service. Commands and the watcher's feed never
    share a connection, and a command left running after Ctrl-C keeps its own: the next
    command dials another (they are pooled, so a quiet shell holds two)."""

    local = False

    def __init__(self, address: str, tls_dir: Path | None,
                 timeout_s: float = defaults.SYNC_REQUEST_TIMEOUT_S) -> None:
        from cloudq.client import Client  # rpyc is loaded only where it is used

        self._connect = lambda: Client(address, tls_dir, timeout_s=timeout_s)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._feeder = self._connect()
        self._feeder.ping()  # a wrong address or certificate is said now, not at a command
        self.address = self._feeder.address

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        """A pooled connection for one command: given back after, closed if the command
        failed (the connection may be unusable) or more than two are idle."""
        with self._lock:
            client = self._idle.pop() if self._idle else None
        client = client or self._connect()
        try:
            yield client
        except BaseException:
            client.close()
            raise
        with self._lock:
            if len(self._idle) < 2:
                self._idle.append(client)
                return
        client.close()

    def run(self, cmd: Command, args: argparse.Namespace, argv: list[str], guard: Guard,
            on_note: Callable[[str], None] | None = None) -> Result:
        if cmd.name == "wait":  # a bounded call at a time, never one RPC held for hours
            return self._wait(args)
        files = files_to_send(argv)  # read here, where the operator typed the path
        if cmd.changes_master(args):  # the master cannot say when it begins: begun when sent
            guard.begin_change(cmd.name)  # refused when read-only; stopped if interrupted
        with self._client() as client:
            return client.command(argv, files, read_only=guard.read_only)

    def _wait(self, args: argparse.Namespace) -> Result:
        from cloudq.commands.tasks import ended_result

        with self._client() as client:
            try:
                client.wait(args.ids, args.timeout)
                status = ""
            except TimeoutError as err:
                status = str(err)
            result = ended_result([client.get(task_id) for task_id in args.ids])
        result.status = status
        return result

    def feed(self, after: int | None, workers: bool = False) -> dict[str, Any]:
        return self._feeder.feed(after, workers)

    def running(self, limit: int) -> tuple[int, list[str]]:
        return 0, []  # leaving this shell stops nothing: there is nothing to confirm

    def close(self) -> None:
        with self._lock:
            clients, self._idle = [self._feeder, *self._idle], []
        for client in clients:
            client.close()
