"""Which master answers: the RPC service asks the seat for the Master of the current term.

A master on its own store (the embedded one) holds the seat for good, with epoch 0. Masters
sharing a PostgreSQL store take turns (cloudq.master.campaign): the leader's seat holds its
Master and epoch; a standby's holds none, and every call is answered with NotLeaderError
naming the leader, which clients and workers follow.
"""

from __future__ import annotations

from typing import Any

from cloudq.errors import NotLeaderError


class Seat:
    def __init__(self, master: Any = None, *, role: str = "leader", address: str = "") -> None:
        self.master = master
        self.role = role  # "leader", "standby", or "starting" before the first election
        self.epoch = 0
        self.address = address  # this master's, as workers reach it
        self.leader: str | None = address if master is not None else None
        self.masters: list[dict[str, Any]] = []  # those sharing the store, from the last look

    def current(self) -> Any:
        """The leading Master; NotLeaderError on a standby."""
        master = self.master
        if master is None:
            raise NotLeaderError(self.refusal(), self.leader)
        return master

    def refusal(self) -> str:
        if self.leader and self.leader != self.address:
            return f"not the leader; the leader is {self.leader}"
        return "not the leader; no master leads at the moment (an election is under way)"

    def lead(self, master: Any, epoch: int) -> None:
        self.master, self.epoch, self.role, self.leader = master, epoch, "leader", self.address

    def stand_by(self, leader: str | None) -> None:
        self.master, self.role = None, "standby"
        self.leader = leader

    def describe(self) -> dict[str, Any]:
        """For `status` and the metrics: role, epoch, the leader and the masters seen."""
        return {"role": self.role, "epoch": self.epoch, "leader": self.leader,
                "masters": self.masters}
