from __future__ import annotations

import math

import pytest

from cloudq.core.model import (
    LockSpec,
    Priority,
    QueueClass,
    Task,
    TaskState,
    new_task,
    parse_request,
)
from cloudq.errors import ValidationError


def test_defaults_and_round_trip():
    task = new_task({"kind": "noop", "locks": ["model-x:2"], "labels": "zone=eu,gpu=a100"},
                    task_id="t1", seq=1, now=5.0)
    assert task.queue is QueueClass.DEFAULT and task.priority is Priority.MEDIUM
    assert task.locks == (LockSpec("model-x", 2),)
    assert task.labels == {"zone": "eu", "gpu": "a100"}
    again = Task.from_dict(task.to_dict())
    assert again == task and again.state is TaskState.PENDING


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"kind": "nope"}, "unknown task kind 'nope'"),
        ({"kind": "noop", "queue": "urgent"}, "unknown queue class 'urgent'"),
        ({"kind": "noop", "priority": 3}, "unknown priority 3"),
        ({"kind": "noop", "resources": {"cpu_cores": -1}}, "cpu_cores must be between 0 and"),
        ({"kind": "noop", "resources": {"mem_gb": math.nan}}, "mem_gb must be finite"),
        ({"kind": "noop", "resources": {"gpus": 1.5}}, "gpus must be a whole number"),
        ({"kind": "noop", "resources": {"gpus": True}}, "gpus must be a number"),
        ({"kind": "noop", "resources": {"cores": 2}}, "unknown resources field(s): cores"),
        ({"kind": "noop", "max_retries": -1}, "max_retries must be between"),
        ({"kind": "noop", "timeout_s": 0}, "timeout_s must be greater than 0"),
        ({"kind": "noop", "ttl_s": "soon"}, "ttl_s must be a number"),
        ({"kind": "noop", "locks": ["a:0"]}, "holders must be between 1"),
        ({"kind": "noop", "locks": ["a", "a"]}, "lock names repeat"),
        ({"kind": "noop", "locks": ["bad name"]}, "lock name must be"),
        ({"kind": "noop", "labels": "novalue"}, "must be written k=v"),
        ({"kind": "noop", "target_worker": "-rf"}, "target worker must be"),
        ({"kind": "noop", "colour": "red"}, "unknown task field(s): colour"),
        ({"kind": "container", "spec": {"image": ""}}, "image"),
        ("not an object", "a task must be an object"),
        ({"kind": "ffmpeg", "spec": {"scenario": "720p30-h264-nvenc"}}, "ask for at least one (-gpu 1)"),
    ],
)
def test_bad_fields_are_refused_with_a_clear_message(raw, message):
    with pytest.raises(ValidationError) as err:
        parse_request(raw)
    assert message in str(err.value)


def test_to_dict_covers_every_field():
    from dataclasses import fields

    task = new_task({"kind": "noop"}, task_id="t1", seq=1, now=1.0)
    assert set(task.to_dict()) == {f.name for f in fields(Task)} - {"request_json"}
    assert not set(task.request_dict()) & set(task.state_dict())  # two halves, no overlap


def test_journal_text_is_the_whole_task_and_follows_its_changes():
    import json

    from cloudq.master.journal import encode_task

    task = new_task({"kind": "noop", "name": "n1", "labels": {"a": "b"}}, task_id="t1",
                    seq=1, now=1.0)
    first = encode_task(task)
    stored = json.loads(first.text)
    assert first.id == "t1" and Task.from_dict(stored).to_dict() == task.to_dict()
    assert first.text.isascii()
    # Fields at their defaults are left out; what was asked for and the identity are kept.
    assert {"max_retries", "locks", "worker", "result", "tried_workers"}.isdisjoint(stored)
    assert stored["name"] == "n1" and stored["labels"] == {"a": "b"} and stored["state"] == "pending"
    task.state, task.attempt, task.worker = TaskState.ASSIGNED, 1, "w1"
    task.result = {"note": "naïve", "bad": float("nan")}
    task.tried_workers = ("w0",)
    second = json.loads(encode_task(task).text)
    assert second["state"] == "assigned" and second["attempt"] == 1 and second["worker"] == "w1"
    assert second["result"] == {"note": "naïve", "bad": None}  # NaN is not JSON: stored as null
    assert second["name"] == "n1"
    back = Task.from_dict(second)
    assert back.tried_workers == ("w0",) and back.labels == {"a": "b"} and back.resources == task.resources
    task.worker, task.state = None, TaskState.QUEUED  # a field back at its default is left out again
    third = json.loads(encode_task(task).text)
    assert "worker" not in third and Task.from_dict(third).worker is None


def test_a_task_at_rest_keeps_no_encoded_request():
    from cloudq.master.journal import encode_task

    task = new_task({"kind": "noop"}, task_id="t1", seq=1, now=1.0)
    encode_task(task)
    assert task.request_json is None  # pending: memory given back
    task.state = TaskState.ASSIGNED
    text = encode_task(task).text
    assert task.request_json is not None and text.startswith(task.request_json[:-1])
    task.state = TaskState.COMPLETED
    encode_task(task)
    assert task.request_json is None
