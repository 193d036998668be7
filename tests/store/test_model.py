"""Property test: any sequence of changes, checkpoints and restarts loads back exactly what a
plain in-memory model holds."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudq.store import Store

RETENTION = 5

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)
record_ids = st.sampled_from(["a", "b", "c", 'd"\\n', "é\u2028"])
changes = st.one_of(
    st.tuples(st.just("put"), record_ids, json_values).map(
        lambda t: ("put", {"id": t[1], "v": t[2]})),
    st.tuples(st.just("del"), record_ids),
    st.tuples(st.just("event"), st.dictionaries(st.text(max_size=3), json_values, max_size=2)),
    st.tuples(st.just("meta"), st.sampled_from(["k", "\n"]), json_values),
)
steps = st.lists(
    st.one_of(st.lists(changes, min_size=1, max_size=3), st.sampled_from(["checkpoint", "reopen"])),
    max_size=25,
)


class Model:
    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.events: list[dict] = []
        self.meta: dict[str, object] = {}

    def apply(self, batch: list[tuple]) -> None:
        for change in batch:
            if change[0] == "put":
                self.records[change[1]["id"]] = change[1]
            elif change[0] == "del":
                self.records.pop(change[1], None)
            elif change[0] == "event":
                self.events = (self.events + [change[1]])[-RETENTION:]
            else:
                self.meta[change[1]] = change[2]


def check(store: Store, model: Model) -> Store:
    store.close()
    store = Store(store._dir, fsync=False, event_retention=RETENTION)
    state = store.load()
    assert state.records == model.records
    assert state.events == model.events
    assert state.meta == model.meta
    return store


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_reload_equals_model(script: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Model()
        store = Store(Path(tmp), fsync=False, event_retention=RETENTION)
        store.load()
        for step in script:
            if step == "checkpoint":
                store.checkpoint()
            elif step == "reopen":
                store = check(store, model)
            else:
                store.append(step)
                model.apply(step)
        check(store, model).close()
