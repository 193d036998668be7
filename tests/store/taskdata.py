"""Task-like records and events shared by the store tests and their child processes."""

from __future__ import annotations


def task_id(seq: int) -> str:
    return f"t-{seq:07d}"


def make_task(seq: int) -> dict:
    """A record shaped like a real task (about 600 bytes of JSON), fully determined by seq."""
    now = 1_700_000_000.0 + seq
    return {
        "id": task_id(seq), "name": f"encode-{seq}", "kind": "ffmpeg",
        "spec": {"scenario": "720p30-h264", "duration_s": 10}, "owner": "ops",
        "queue": "default", "priority": "medium",
        "resources": {"cpu_cores": 2.0, "mem_gb": 1.0, "storage_gb": 1.0, "gpus": 0,
                      "gpu_mem_gb": 0.0},
        "target_worker": None, "labels": {"seq": str(seq)}, "locks": [], "max_retries": 3,
        "retry_backoff_s": 5.0, "timeout_s": 3600.0, "ttl_s": None, "state": "queued",
        "attempt": 0, "placement_attempts": 0, "last_error": None, "reason": None,
        "worker": None, "seq": seq, "created_at": now, "updated_at": now, "started_at": None,
        "finished_at": None, "result": None,
    }


def make_event(seq: int) -> dict:
    return {"task": task_id(seq), "from": None, "to": "queued", "reason": "submitted",
            "seq": seq}


def submit(seq: int) -> list[tuple]:
    """The changes of one task submission: the record and its audit event, in one batch."""
    return [("put", make_task(seq)), ("event", make_event(seq))]
