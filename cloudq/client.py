"""`cloudq.Client`: cloudq from Python. `cloudq ctl` and the remote shell use it too.

    from cloudq import Client

    with Client("10.0.0.5:18861", tls_dir="certs") as cq:
        task = cq.submit(kind="exec", spec={"argv": ["python3", "train.py"]}, locks=["model-x"])
        done = task.wait(timeout=3600)
        print(done["state"], done["result"])

Every method is one or a few RPC calls; errors are the `cloudq.errors` hierarchy
(`ValidationError` for a bad field, `NotFoundError` for an unknown id, `AuthError`,
`LimitError`...), and `ConnectionError` when the master cannot be reached. `wait` is answered by
the master when the tasks' final moves are durable, not by polling. See docs/api.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudq import defaults
from cloudq.commands.registry import Result
from cloudq.errors import CloudqError
from cloudq.rpc.client import MasterClient

FOLLOW_POLL_S = 0.5  # logs and events with follow=True ask again this often
WAIT_MARGIN_S = 5.0  # a wait call asks the master for this much less than the RPC timeout


class Client:
    def __init__(self, address: str = f"127.0.0.1:{defaults.PORT}", tls_dir: str | Path | None = None,
                 timeout_s: float = defaults.SYNC_REQUEST_TIMEOUT_S) -> None:
        """Connects at once: a wrong address or certificate is an error here, not later.
        `tls_dir` holds ca.pem, admin.pem and admin.key (`cloudq certs init`)."""
        self.timeout_s = timeout_s
        self._rpc = MasterClient(address, Path(tls_dir) if tls_dir else None, timeout_s=timeout_s)
        self.address = self._rpc.address

    # ------------------------------------------------------------------ tasks
    def submit(self, **fields: Any) -> TaskHandle:
        """One task, as fields (kind, spec, resources, queue, priority, locks, after...);
        returns its handle: {id, name, state, worker, attempt}, with .wait(), .get()..."""
        return self.submit_many([fields])[0]

    def submit_many(self, tasks: list[dict[str, Any]]) -> list[TaskHandle]:
        """A batch, accepted or refused whole (the error names the bad task)."""
        return [TaskHandle(self, view) for view in self._rpc.call("submit", {"tasks": tasks})]

    def get(self, task_id: str) -> dict[str, Any]:
        """Everything about one task (what `show` prints), with its last events."""
        return self.command(["show", task_id]).data

    def wait(self, ids: list[str], timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Returns once every task in `ids` has ended (completed, failed, cancelled or dead),
        with each one's view; raises TimeoutError (naming those still going) after `timeout`
        seconds. The master answers each call as soon as the ends are durable."""
        ids = list(dict.fromkeys(ids))
        ended: dict[str, dict[str, Any]] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = ids
        while waiting:
            left = (deadline - time.monotonic()) if deadline is not None else float("inf")
            chunk = max(min(left, self.timeout_s - WAIT_MARGIN_S), 0.0)
            answer = self._rpc.call("wait", {"ids": waiting, "wait_s": chunk})
            ended.update(answer["ended"])
            waiting = answer["waiting"]
            if waiting and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(waiting)} of {len(ids)} tasks had not ended after "
                                   f"{timeout:g}s: {', '.join(waiting[:10])}")
        return {task_id: ended[task_id] for task_id in ids if task_id in ended}

    def logs(self, task_id: str, follow: bool = False) -> Iterator[str]:
        """The tail of a task's output; with follow, what is new as it comes, until it ends."""
        seen = ""
        while True:
            state = self.command(["show", task_id]).data["state"]
            text = self.command(["logs", task_id, "--raw"]).status
            new = text[len(seen):] if text.startswith(seen) else text
            if new:
                yield new
            seen = text
            if not follow or state in ("completed", "failed", "cancelled", "dead"):
                return
            time.sleep(FOLLOW_POLL_S)

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.command(["cancel", task_id]).data

    def hold(self, task_id: str) -> dict[str, Any]:
        return self.command(["hold", task_id]).data

    def release(self, task_id: str) -> dict[str, Any] | None:
        """A held task is queued again (its view), or a worker takes tasks again (None)."""
        return self.command(["release", task_id]).data

    def retry(self, task_id: str) -> dict[str, Any]:
        return self.command(["retry", task_id]).data

    def queue(self, state: str | None = None, limit: int = 200, **filters: str) -> list[dict[str, Any]]:
        """Tasks as `queue` lists them (filters: worker, queue, owner, name, array)."""
        argv = ["queue", "--limit", str(limit)] + (["--state", state] if state else [])
        argv += [f"--{key}={value}" for key, value in filters.items() if value is not None]
        return self.command(argv).data

    def workers(self) -> list[dict[str, Any]]:
        return self.command(["workers"]).data

    def events(self, since: str | float | None = None, follow: bool = False,
               task_id: str | None = None, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """Events oldest first (since: seconds ago as `5m`, a time of day, or Unix seconds);
        with follow, then each new one as it happens, until the iterator is closed."""
        argv = ["events", *([task_id] if task_id else []), "--limit", str(limit)]
        last_time: float | None = None
        at_last_time: set[tuple[Any, ...]] = set()  # told already, of those at last_time
        since_arg = None if since is None else str(since)
        while True:
            page = self.command(argv + (["--since", since_arg] if since_arg else [])).data
            for event in page:  # oldest first; a follow-up page starts again at last_time
                key = tuple(event.values())
                if last_time is not None and (event["time"] < last_time or key in at_last_time):
                    continue
                if event["time"] != last_time:
                    last_time, at_last_time = event["time"], set()
                at_last_time.add(key)
                yield event
            if not follow:
                return
            since_arg = repr(last_time) if last_time is not None else since_arg
            time.sleep(FOLLOW_POLL_S)

    # ------------------------------------------------------------------ any command
    def command(self, argv: list[str], files: dict[str, str] | None = None,
                read_only: bool = False) -> Result:
        """One command line of the registry (as the shell and `ctl` run it); a listing that
        comes in pages is returned whole. `read_only`: the master refuses it if it would
        change anything."""
        pages = self.pages(argv, files or {}, read_only)
        first = next(pages)
        for page in pages:
            first.rows.extend(page.rows)
            first.data.extend(page.data or [])
        first.next_argv = None
        return first

    def pages(self, argv: list[str], files: dict[str, str] | None = None,
              read_only: bool = False) -> Iterator[Result]:
        """The Result of a command line, then the further pages of its listing, if any."""
        page = Result.from_dict(self._rpc.call("call", {"argv": argv, "files": files or {},
                                                        "read_only": read_only}))
        yield page
        while page.next_argv:
            argv = page.next_argv
            if not (isinstance(argv, list) and all(isinstance(word, str) for word in argv)):
                raise CloudqError("the master sent a malformed next-page line")
            page = Result.from_dict(self._rpc.call("call", {"argv": argv, "files": {},
                                                            "read_only": read_only}))
            if not page.rows and page.next_argv:  # an empty page that promises more: stop
                raise CloudqError("the master sent an empty page of a listing")
            yield page

    def feed(self, after: int | None, workers: bool = False) -> dict[str, Any]:
        """What a shell shows between commands (the master's Views.feed)."""
        return self._rpc.call("feed", {"after": after, "workers": workers})

    def ping(self) -> dict[str, Any]:
        return self._rpc.call("ping")

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TaskHandle(dict[str, Any]):
    """One submitted task: what the master said at submit (id, name, state, worker, attempt),
    as a plain dict (it prints and serialises as one), with the client's per-task calls bound
    to its id. The dict is that answer, not a live view: `get()` reads the task now."""

    def __init__(self, client: Client, view: dict[str, Any]) -> None:
        super().__init__(view)
        self._client = client

    @property
    def id(self) -> str:
        return str(self["id"])

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The task once it has ended (see Client.wait); TimeoutError after `timeout` s."""
        return self._client.wait([self.id], timeout)[self.id]

    def get(self) -> dict[str, Any]:
        return self._client.get(self.id)

    def logs(self, follow: bool = False) -> Iterator[str]:
        return self._client.logs(self.id, follow)

    def cancel(self) -> dict[str, Any]:
        return self._client.cancel(self.id)

    def hold(self) -> dict[str, Any]:
        return self._client.hold(self.id)

    def release(self) -> dict[str, Any] | None:
        return self._client.release(self.id)

    def retry(self) -> dict[str, Any]:
        return self._client.retry(self.id)
