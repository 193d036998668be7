"""Reservation ledgers: what each worker has free, and who holds each named lock.

free = reported capacity minus what the master has already booked there, so two tasks are
never placed on the same free capacity between heartbeats. No I/O; the master owns one Ledger
per worker and one LockTable for the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudq.core.model import LockSpec, Resources

EPSILON = 1e-9  # float sums of fractional cores must not refuse an exact fit


@dataclass(slots=True)
class Booking:
    cpu_cores: float
    mem_gb: float
    storage_gb: float
    gpu_indices: tuple[int, ...]


@dataclass(slots=True)
class Ledger:
    """One worker's capacity and the bookings against it."""

    name: str
    cpu_cores: float
    mem_gb: float
    storage_gb: float
    gpu_mem_gb: tuple[float, ...] = ()  # memory of each GPU, by index
    max_tasks: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    bookings: dict[str, Booking] = field(default_factory=dict)
    free_cpu: float = 0.0
    free_mem: float = 0.0
    free_storage: float = 0.0
    free_gpus: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.recompute()

    def recompute(self) -> None:
        """Free capacity from scratch: after registration or a capacity change."""
        self.free_cpu = self.cpu_cores - sum(b.cpu_cores for b in self.bookings.values())
        self.free_mem = self.mem_gb - sum(b.mem_gb for b in self.bookings.values())
        self.free_storage = self.storage_gb - sum(b.storage_gb for b in self.bookings.values())
        used = {i for b in self.bookings.values() for i in b.gpu_indices}
        self.free_gpus = set(range(len(self.gpu_mem_gb))) - used

    @property
    def slots_free(self) -> int:
        return self.max_tasks - len(self.bookings)

    def misfit(self, need: Resources) -> str | None:
        """Why `need` does not fit in what is free now (every resource that is short, not only
        the first), or None when it fits."""
        if self.slots_free <= 0:
            return f"Worker full: running {len(self.bookings)} of max {self.max_tasks} tasks"
        short = []
        if need.cpu_cores > self.free_cpu + EPSILON:
            short.append(_insufficient("CPU", self.free_cpu, need.cpu_cores))
        if need.mem_gb > self.free_mem + EPSILON:
            short.append(_insufficient("memory", self.free_mem, need.mem_gb, " GB"))
        if need.storage_gb > self.free_storage + EPSILON:
            short.append(_insufficient("storage", self.free_storage, need.storage_gb, " GB"))
        if need.gpus:
            usable = self._gpus_with(need.gpu_mem_gb)
            if len(usable) < need.gpus:
                detail = f" with {need.gpu_mem_gb:.2f} GB each" if need.gpu_mem_gb else ""
                short.append(
                    f"Insufficient GPUs: worker has {len(usable)} available{detail}, "
                    f"task requires {need.gpus}"
                )
        return "; ".join(short) if short else None

    def misfit_when_empty(self, need: Resources) -> str | None:
        """Whether `need` could ever fit here, ignoring current bookings."""
        empty = Ledger(
            self.name, self.cpu_cores, self.mem_gb, self.storage_gb, self.gpu_mem_gb,
            max(self.max_tasks, 1), self.labels, self.capabilities,
        )
        return empty.misfit(need)

    def book(self, task_id: str, need: Resources) -> Booking:
        gpus = tuple(sorted(self._gpus_with(need.gpu_mem_gb))[: need.gpus]) if need.gpus else ()
        booking = Booking(need.cpu_cores, need.mem_gb, need.storage_gb, gpus)
        self.bookings[task_id] = booking
        self.free_cpu -= booking.cpu_cores
        self.free_mem -= booking.mem_gb
        self.free_storage -= booking.storage_gb
        if gpus:
            self.free_gpus.difference_update(gpus)
        return booking

    def release(self, task_id: str) -> Booking | None:
        booking = self.bookings.pop(task_id, None)
        if booking is not None:
            self.free_cpu += booking.cpu_cores
            self.free_mem += booking.mem_gb
            self.free_storage += booking.storage_gb
            if booking.gpu_indices:
                self.free_gpus.update(booking.gpu_indices)
        return booking

    def _gpus_with(self, mem_gb: float) -> list[int]:
        return [i for i in self.free_gpus if self.gpu_mem_gb[i] + EPSILON >= mem_gb]

    def usage(self) -> dict[str, float]:
        return {
            "cpu_free": round(self.free_cpu, 3),
            "mem_free_gb": round(self.free_mem, 3),
            "storage_free_gb": round(self.free_storage, 3),
            "gpus_free": len(self.free_gpus),
            "tasks": len(self.bookings),
        }


def _insufficient(what: str, free: float, need: float, unit: str = "") -> str:
    return f"Insufficient {what}: worker has {free:.2f}{unit} available, task requires {need:.2f}{unit}"


class LockTable:
    """Cluster-wide named locks; a lock admits as many holders as the task asking says."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}

    def blocking(self, locks: tuple[LockSpec, ...]) -> tuple[LockSpec, list[str]] | None:
        """The first of `locks` with no room left, and the tasks holding it."""
        for lock in locks:
            holders = self._holders.get(lock.name, ())
            if len(holders) >= lock.holders:
                return lock, sorted(holders)
        return None

    def blocker(self, locks: tuple[LockSpec, ...]) -> str | None:
        found = self.blocking(locks)
        if found is None:
            return None
        return held_reason(*found)

    def acquire(self, task_id: str, locks: tuple[LockSpec, ...]) -> None:
        for lock in locks:
            self._holders.setdefault(lock.name, set()).add(task_id)

    def release(self, task_id: str, locks: tuple[LockSpec, ...]) -> None:
        for lock in locks:
            holders = self._holders.get(lock.name)
            if holders is not None:
                holders.discard(task_id)
                if not holders:
                    del self._holders[lock.name]

    def holder_counts(self) -> dict[str, int]:
        """How many tasks hold each lock that is held."""
        return {name: len(holders) for name, holders in self._holders.items()}

    def snapshot(self) -> dict[str, list[str]]:
        return {name: sorted(holders) for name, holders in sorted(self._holders.items())}


def held_reason(lock: LockSpec, holders: list[str]) -> str:
    """Why a task waits for `lock`, in the words `why` and `queue` show."""
    return f"Lock {lock.name} is held by {', '.join(holders)} ({len(holders)} of {lock.holders} holders)"
