"""A worker's own endpoint (`cloudq worker --metrics-port N`), scraped with a plain HTTP GET
while it runs a real FFmpeg transcode, and checked by promtool."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudq import __version__
from tests.cluster.harness import wait_until
from tests.e2e.conftest import Cluster, Worker, http_get, require_tool
from tests.promtool import check_exposition

pytestmark = pytest.mark.timeout(240)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_worker_endpoint_while_a_transcode_runs(start_cluster: Callable[..., Cluster]) -> None:
    require_tool("ffmpeg")
    require_tool("promtool")  # before starting anything
    cluster = start_cluster(Worker("wm", ("--max-tasks", "2"), metrics=True))
    master = cluster.master
    url = f"http://127.0.0.1:{cluster.worker_ports['wm']}/metrics"

    def scrape() -> Samples:
        return parse(http_get(url))

    assert scrape()[("cloudq_worker_active_tasks", ())] == 0
    (writes,) = cluster.submit({"kind": "exec", "spec": {
        "argv": ["sh", "-c", "head -c 1048576 /dev/zero > out.bin"]}})
    master.wait_state(writes, "completed")

    # A transcode of an hour of media: it runs while the endpoint is read, then is cancelled.
    (encode,) = cluster.submit({"kind": "ffmpeg", "spec": {"scenario": "360p30-h264", "duration_s": 3600}})
    speed_key = ("cloudq_worker_encode_speed", (("task", encode),))
    progress_key = ("cloudq_worker_task_progress_ratio", (("task", encode),))
    seen: list[str] = []

    def encoding() -> bool:
        seen.append(http_get(url))
        samples = parse(seen[-1])
        return speed_key in samples and samples.get(progress_key, 0) > 0

    wait_until(encoding, 60, f"the worker to show {encode}'s speed and progress", every=0.2)
    text = seen[-1]
    samples = parse(text)
    assert samples[("cloudq_worker_active_tasks", ())] == 1
    assert 0 < samples[progress_key] < 1
    assert samples[speed_key] > 0
    assert samples[("cloudq_worker_info", (("version", __version__), ("worker", "wm")))] == 1
    assert samples[("cloudq_worker_rpc_bytes_total", (("direction", "sent"),))] > 0
    check_exposition(text)

    master.ctl("cancel", encode)
    cancelled = ("cloudq_worker_tasks_finished_total", (("kind", "ffmpeg"), ("outcome", "cancelled")))
    wait_until(lambda: scrape()[cancelled] == 1, 30, "the cancelled transcode to be counted")
    samples = scrape()
    assert samples[("cloudq_worker_active_tasks", ())] == 0
    assert speed_key not in samples and progress_key not in samples  # gone with the task
    assert samples[("cloudq_worker_tasks_finished_total", (("kind", "exec"), ("outcome", "completed")))] == 1
    # out.bin, and whatever FFmpeg wrote before it was stopped.
    assert samples[("cloudq_worker_bytes_written_total", ())] >= 1 << 20
    assert samples[("cloudq_worker_runner_errors_total", (("kind", "ffmpeg"),))] == 0

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.replace("/metrics", "/elsewhere"), timeout=5)
    assert err.value.code == 404
