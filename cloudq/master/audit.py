"""`--audit-log FILE`: every event, as one JSON object per line, for log shippers.

The events are those `events` shows (task moves, lock waits, operators' changes, workers
joining, lost, quarantined...), written once the journal has made them durable, so the file
never holds something the master may still undo (a full disk rolls back what was not
stored). One write per group commit, in the journal's writer, in commit order. The file is
rotated by size as logging's RotatingFileHandler does it: FILE.1 is the newest old part, up to
FILE.N.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

import orjson

log = logging.getLogger("cloudq.master")


class AuditLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A private logger (not propagated): the lines go to this file only, whatever the
        # process's logging is set to.
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.Logger(f"cloudq.audit.{path}", logging.INFO)
        self._logger.addHandler(self._handler)
        self._logger.propagate = False

    def write(self, batch: list[tuple]) -> None:
        """The events of one durable batch (journal changes `("event", dict)`), as lines."""
        lines = [orjson.dumps(change[1]).decode() for change in batch if change[0] == "event"]
        if lines:  # one record: one write, and a rollover is checked once per batch
            self._logger.info("\n".join(lines))

    def close(self) -> None:
        self._handler.close()
