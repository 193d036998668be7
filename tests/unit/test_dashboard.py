"""The Grafana dashboard, without Grafana or Prometheus: every metric its queries read is one
the master or a worker exports, every panel queries the `${datasource}` variable, and the file
is a dashboard Grafana can import. (tests/e2e/test_dashboard.py runs every query for real.)"""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from cloudq.master.core import Master
from cloudq.metrics import master_registry
from cloudq.worker.metrics import worker_registry
from cloudq.worker.probes import GpuEnergy
from cloudq.worker.tasks import TaskCounts
from tests.dashboard import load, metric_names, panels, substitute, targets

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
            "info": ("_info",), "summary": ("", "_count", "_sum")}


def exported(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry's families expose, whether or not they have samples now."""
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]}


def master_names() -> set[str]:
    registry, _ = master_registry(Master())
    return exported(registry)


def worker_names() -> set[str]:
    agent = SimpleNamespace(name="w", _lock=threading.Lock(), running={}, counts=TaskCounts(),
                            gpu_energy=GpuEnergy())
    return exported(worker_registry(agent))


def test_every_metric_in_the_dashboard_is_exported() -> None:
    master, worker = master_names(), worker_names()
    assert not master & worker, f"the master and workers export the same names: {master & worker}"
    used: Counter[str] = Counter()
    for title, ref, expr in targets(load()):
        names = metric_names(expr)
        assert names, f"{title} {ref}: no metric in {expr!r}"
        unknown = names - master - worker
        assert not unknown, f"{title} {ref}: {sorted(unknown)} exported by neither master nor worker"
        used.update(names)
    # The families the issue asks the dashboard to show are all on it.
    for name in ("cloudq_queue_by_class", "cloudq_queue_by_priority", "cloudq_tasks",
                 "cloudq_tasks_finished_total", "cloudq_task_wait_seconds_bucket",
                 "cloudq_task_run_seconds_bucket", "cloudq_workers", "cloudq_worker_cpu_cores",
                 "cloudq_worker_mem_bytes", "cloudq_gpu_utilization_ratio", "cloudq_gpu_memory_bytes",
                 "cloudq_lock_waiters", "cloudq_transcode_encode_speed_bucket",
                 "cloudq_gpu_energy_joules_total", "cloudq_worker_encode_speed"):
        assert used[name], f"{name} is on no panel"


def test_metric_names_are_found_in_promql() -> None:
    assert metric_names('sum by (le, kind) (rate(a_bucket{kind=~"x|y"}[$__rate_interval])) / 3.6e6') == {"a_bucket"}
    assert metric_names("a * on (instance) group_left (worker) b{worker=~\"$worker\"}") == {"a", "b"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(c2_bucket[5m])))") == {"c2_bucket"}


def test_the_dashboard_is_one_grafana_imports() -> None:
    dashboard = load()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for p in panels(dashboard)
                                                     if p not in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(dashboard):
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no query"
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: refIds repeat"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title
            assert "$" not in substitute(target["expr"]), target["expr"]
