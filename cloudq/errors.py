"""One error hierarchy: callers catch CloudqError, the shell prints it plainly."""

from __future__ import annotations


class CloudqError(Exception):
    """Base of every error cloudq raises on purpose; its message is meant for the operator."""


class ValidationError(CloudqError):
    """A task spec, command line or RPC argument was malformed; nothing was changed."""


class SpecError(ValidationError):
    """A kind-specific task spec (ffmpeg, container, exec) was refused."""


class NotFoundError(CloudqError):
    """An id or name that does not exist."""


class TransitionError(CloudqError):
    """A task was asked to move between states that the transitions table does not allow."""


class QueueFullError(CloudqError):
    """The queue is at its configured limit; the submission was not accepted."""


class StoreError(CloudqError):
    """The state on disk could not be read or written safely."""


class RunnerError(CloudqError):
    """A task could not be run on this worker (missing image, encoder, engine...)."""


class AuthError(CloudqError):
    """A peer could not prove who it is, or asked for something it may not do."""


class LimitError(CloudqError):
    """A bound was reached (connections, registered workers, a reply's size); nothing changed.
    Trying again later, or asking for less, may succeed."""


class NotLeaderError(CloudqError):
    """This master is a standby (or just stepped down): `leader` is the address of the one that
    leads, when known. Nothing was done; clients and workers call the leader instead."""

    def __init__(self, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class InternalError(CloudqError):
    """A command failed on a bug of its own (a KeyError, TypeError or ValueError inside it),
    not on anything the operator got wrong; the message names the error. Here, with the
    others, so it keeps its type over RPC."""
