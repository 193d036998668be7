"""A master sharing a PostgreSQL store with others: standby until it holds the leader lease,
leader while it keeps renewing it, standby again once it cannot.

One thread. As a standby it tries for the lease every `poll_s` and remembers who leads (the
address standbys name in their refusals). Once elected it calls `lead(epoch)`, which loads the
store and starts serving, and then renews the lease every `renew_s`. It steps down
(`step_down(why, leader)`) when the lease is found taken, or when it could not renew it for a whole
lease by its own clock: by then another master may have taken it, and every write of this one
would be refused by the fence anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cloudq.errors import StoreError
from cloudq.master.seat import Seat
from cloudq.store.lease import LeaderLease

log = logging.getLogger("cloudq.master")


class Campaign:
    def __init__(self, lease: LeaderLease, seat: Seat, lead: Callable[[int], None],
                 step_down: Callable[[str, str | None], None], *, renew_s: float = 1.0,
                 poll_s: float = 0.5) -> None:
        self.lease = lease
        self.seat = seat
        self._lead = lead
        self._step_down = step_down
        self.renew_s = renew_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed_at = 0.0  # monotonic time the last successful renewal was sent
        self._outage: str | None = None  # the database error being waited out, logged once
        self.first_round = threading.Event()  # the first try for the lease has been made

    def start(self) -> Campaign:
        self._thread = threading.Thread(target=self._run, name="campaign", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the campaign: no more elections or renewals."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def release(self) -> None:
        """After the last term has ended: a leader gives the lease up, so that a standby takes
        over at once instead of after the lease."""
        try:
            if self.seat.role == "leader":
                self.lease.release(self.seat.epoch)
            self.lease.announce("stopped", self.seat.epoch)
        except StoreError as err:
            log.warning("could not release the leader lease: %s", err)
        self.lease.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.seat.role == "leader":
                    self._hold()
                    wait = self.renew_s
                else:
                    self._try()
                    wait = self.poll_s
                self._look_around()
            except Exception:  # noqa: BLE001 - the campaign thread must survive anything
                log.exception("leader election step failed; trying again")
                wait = self.poll_s
            self.first_round.set()
            self._stop.wait(wait)

    def _try(self) -> None:
        started = time.monotonic()
        try:
            epoch = self.lease.try_acquire()
            leader = None if epoch is not None else self.lease.leader()
        except StoreError as err:
            self._database_down(err)
            return
        self._database_up()
        if epoch is None:
            address = leader.address if leader is not None and not leader.expired else None
            if address != self.seat.leader:
                log.info("standby: the leader is %s", address or "(none: election under way)")
            self.seat.stand_by(address)
            return
        log.warning("elected leader with epoch %d; loading the store", epoch)
        self._renewed_at = started
        try:
            self._lead(epoch)
        except Exception as err:  # noqa: BLE001 - a failed start must not leave a half leader
            log.exception("could not start leading (epoch %d)", epoch)
            self._step_down(f"starting as leader failed: {err}", None)
            return
        log.warning("leading with epoch %d at %s", epoch, self.seat.address)

    def _hold(self) -> None:
        epoch = self.seat.epoch
        sent = time.monotonic()
        try:
            held = self.lease.renew(epoch)
        except StoreError as err:
            self._database_down(err)
            if time.monotonic() - self._renewed_at >= self.lease.lease_s:
                self._step_down(f"could not renew the leader lease for {self.lease.lease_s:g} s "
                                f"({err})", None)
            return
        self._database_up()
        if held:
            self._renewed_at = sent
            return
        leader = self.lease.leader()
        self._step_down(f"epoch {epoch} was taken over by "
                        f"{leader.address if leader else 'another master'}"
                        f"{f' (epoch {leader.epoch})' if leader else ''}",
                        leader.address if leader is not None else None)

    def _look_around(self) -> None:
        """Says where this master stands, and notes the others (for `status`)."""
        try:
            self.lease.announce(self.seat.role, self.seat.epoch)
            self.seat.masters = self.lease.masters(within_s=max(5.0, 3 * self.lease.lease_s))
        except StoreError:
            pass  # said by _database_down at the next try

    def _database_down(self, err: StoreError) -> None:
        if self._outage != str(err):
            log.error("leader lease: %s; retrying", err)
            self._outage = str(err)

    def _database_up(self) -> None:
        if self._outage is not None:
            log.warning("leader lease: the database answers again")
            self._outage = None
