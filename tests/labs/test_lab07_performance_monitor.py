"""Checks for lab 07: PoolPerformanceMonitor."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from pglab.backends import terminate_backends
from pglab.testing import eventually, within

MODULE = "lab07_performance_monitor"


@dataclass
class StandInSettings:
    """The two methods of lab 03's DatabaseSettings that lab 05's manager uses."""

    dsn: str

    def get_dsn(self) -> str:
        return self.dsn

    def get_pool_kwargs(self) -> dict[str, Any]:
        return {"min_size": 1, "max_size": 4}



@pytest.fixture
async def manager(load_solution, dsn, app_name):
    """Lab 05's reference AdvancedPoolManager (max 4 connections) on the live server."""
    lab05 = load_solution("lab05_advanced_pool_manager")
    monitor_class = load_solution("lab04_health_monitor").ConnectionHealthMonitor
    manager = lab05.AdvancedPoolManager(monitor_class, application_name=app_name, health_check_interval=60)
    await within(manager.initialize_pool(StandInSettings(dsn)), 15, "lab 05 initialize_pool()")
    yield manager
    await within(manager.graceful_shutdown(timeout=2), 10, "lab 05 graceful_shutdown()")
    await terminate_backends(dsn, app_name)


class Silent:
    """A pool manager for report checks: the samples are synthetic."""

    async def get_pool_metrics(self) -> dict[str, Any]:
        return {"pool_stats": {"min_size": 1, "max_size": 10, "size": 1, "idle": 1, "in_use": 0}}


def sample(*, in_use: int = 5, max_size: int = 10, cpu: float = 30.0, memory: float = 40.0) -> dict[str, Any]:
    """A synthetic sample in the shape collect_metrics() produces."""
    return {
        "timestamp": time.time(),
        "pool": {"pool_stats": {"min_size": 1, "max_size": max_size, "size": max(in_use, 1),
                                "idle": max(in_use, 1) - in_use, "in_use": in_use}},
        "system": {"cpu_percent": cpu, "memory_percent": memory, "process_rss_bytes": 50_000_000,
                   "disk_read_bytes": 0, "disk_write_bytes": 0},
    }


async def max_loop_lag(work, tick: float = 0.010) -> float:
    """Largest delay of a 10 ms ticker beyond its due time while `work()` runs."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + tick
            await asyncio.sleep(tick)
            lags.append(loop.time() - due)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(3 * tick)  # the ticker is asleep, waiting for its next due time
    await within(work(), 10, "collect_metrics()")
    await asyncio.sleep(3 * tick)  # let it wake up and record how late it is
    stop.set()
    await within(task, 5, "the lag ticker")
    return max(lags)


async def test_collect_metrics_samples_pool_and_system(lab, manager):
    monitor = lab.PoolPerformanceMonitor(manager, collection_interval=60, history_size=10)
    async with manager.acquire() as _a, manager.acquire() as _b:
        sample_ = await within(monitor.collect_metrics(), 10, "collect_metrics()")
    assert set(sample_) >= {"timestamp", "pool", "system"}, f"a sample needs timestamp, pool and system: {sample_}"
    assert sample_["pool"]["pool_stats"]["in_use"] == 2, (
        f"two borrowed connections should show in the sample's pool metrics: {sample_['pool']['pool_stats']}"
    )
    system = sample_["system"]
    expected = {"cpu_percent", "memory_percent", "process_rss_bytes", "disk_read_bytes", "disk_write_bytes"}
    assert set(system) >= expected, f"missing system metrics: {expected - set(system)}"
    assert 0 <= system["cpu_percent"] <= 100 and 0 < system["memory_percent"] <= 100, system
    assert system["process_rss_bytes"] > 1_000_000, f"process RSS in bytes looks wrong: {system['process_rss_bytes']}"
    assert list(monitor.metrics_history) == [sample_], "collect_metrics() should append the sample it returns"


async def test_collect_metrics_reports_the_disk_counters_and_copes_without_them(lab, monkeypatch):
    monitor = lab.PoolPerformanceMonitor(Silent(), collection_interval=60)
    known = SimpleNamespace(read_bytes=123_456, write_bytes=654_321)
    monkeypatch.setattr(psutil, "disk_io_counters", lambda *args, **kwargs: known)
    system = (await within(monitor.collect_metrics(), 5, "collect_metrics()"))["system"]
    assert (system["disk_read_bytes"], system["disk_write_bytes"]) == (123_456, 654_321), (
        "the check made psutil.disk_io_counters() return read_bytes=123456, write_bytes=654321, but the sample "
        f"says {system['disk_read_bytes']}, {system['disk_write_bytes']}: report the counters psutil returns"
    )
    # Where the OS exposes no disk counters (some containers) psutil returns None.
    monkeypatch.setattr(psutil, "disk_io_counters", lambda *args, **kwargs: None)
    try:
        system = (await within(monitor.collect_metrics(), 5, "collect_metrics()"))["system"]
    except AttributeError as exc:
        pytest.fail(f"collect_metrics() failed where psutil.disk_io_counters() returns None: {exc!r}; report 0")
    assert (system["disk_read_bytes"], system["disk_write_bytes"]) == (0, 0), (
        f"without disk counters the sample should report 0 bytes read and written: {system}"
    )


# Run in a fresh process, on a new thread: psutil keeps the last CPU sample per thread, and a
# thread of this process may inherit a dead thread's sample through a reused thread id.
FIRST_SAMPLE_ON_A_NEW_THREAD = """
import asyncio, importlib.util, sys, threading, time
spec = importlib.util.spec_from_file_location("lab07", sys.argv[1])
lab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab)

class Silent:
    async def get_pool_metrics(self):
        return {"pool_stats": {"min_size": 1, "max_size": 10, "size": 1, "idle": 1, "in_use": 0}}

def work():
    monitor = lab.PoolPerformanceMonitor(Silent(), collection_interval=60)
    busy_until = time.perf_counter() + 0.3
    while time.perf_counter() < busy_until:  # keep one core busy between creation and the first sample
        pass
    print(asyncio.run(monitor.collect_metrics())["system"]["cpu_percent"])

thread = threading.Thread(target=work)
thread.start()
thread.join()
"""


async def test_the_first_sample_measures_cpu_since_the_monitor_was_made(lab):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FIRST_SAMPLE_ON_A_NEW_THREAD, lab.__file__,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await within(proc.communicate(), 8, "a monitor's first sample in a fresh process")
    assert proc.returncode == 0, f"making a monitor and taking one sample on a new thread failed: {err.decode()[-800:]}"
    cpu = float(out.decode().split()[-1])
    assert cpu > 0, (
        "a monitor made on a new thread, which then kept a core busy for 0.3 s, reported cpu_percent=0.0 in its "
        "first sample: psutil's first cpu_percent(interval=None) in a thread has nothing to compare with and "
        "says 0.0. Call psutil.cpu_percent(interval=None) once in __init__ to start the window"
    )


async def test_collect_metrics_never_stalls_the_event_loop(lab, manager):
    monitor = lab.PoolPerformanceMonitor(manager, collection_interval=60)

    async def collect_three() -> None:
        for _ in range(3):
            await monitor.collect_metrics()

    # The best of three runs: a busy machine may delay one run, a blocking call delays all of them.
    lag = min([await max_loop_lag(collect_three) for _ in range(3)])
    assert lag < 0.050, (
        f"the event loop was blocked for {lag * 1000:.0f} ms while collect_metrics() ran; every other "
        "request waits that long. psutil.cpu_percent(interval=1) sleeps a second: use interval=None"
    )


async def test_history_never_exceeds_its_bound(lab):
    monitor = lab.PoolPerformanceMonitor(Silent(), collection_interval=60, history_size=5)
    samples = [await within(monitor.collect_metrics(), 5, "collect_metrics()") for _ in range(8)]
    history = list(monitor.metrics_history)
    assert len(history) == 5, f"history_size=5 but metrics_history holds {len(history)} samples"
    assert history == samples[-5:], "the history should keep the 5 newest samples, oldest first"


async def test_start_and_stop_monitoring(lab):
    monitor = lab.PoolPerformanceMonitor(Silent(), collection_interval=0.02, history_size=1000)
    tasks_before = asyncio.all_tasks()
    await within(monitor.start_monitoring(), 5, "start_monitoring()")
    await within(monitor.start_monitoring(), 5, "a second start_monitoring()")
    new = [t for t in asyncio.all_tasks() - tasks_before if not t.done()]
    assert len(new) == 1, f"two start_monitoring() calls should leave one background task, found {len(new)}"

    async def sampled() -> bool:
        return len(monitor.metrics_history) >= 3

    await eventually(sampled, 5, "the monitoring task collected fewer than 3 samples at a 0.02 s interval")
    await within(monitor.stop_monitoring(), 5, "stop_monitoring()")
    assert all(t.done() for t in new), "stop_monitoring() should cancel the task and wait for it"
    count = len(monitor.metrics_history)
    await asyncio.sleep(0.1)
    assert len(monitor.metrics_history) == count, "samples keep arriving after stop_monitoring()"


class SlowToStop:
    """A pool manager whose metrics call takes a while to clean up once cancelled."""

    def __init__(self) -> None:
        self.collecting = asyncio.Event()
        self.cleaned_up = False

    async def get_pool_metrics(self) -> dict[str, Any]:
        self.collecting.set()
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.3)  # e.g. giving back a connection
            self.cleaned_up = True
        return {}


async def test_stop_monitoring_returns_only_when_the_task_has_finished(lab):
    source = SlowToStop()
    monitor = lab.PoolPerformanceMonitor(source, collection_interval=60)
    tasks_before = asyncio.all_tasks()
    await within(monitor.start_monitoring(), 5, "start_monitoring()")
    await within(source.collecting.wait(), 5, "the first collect_metrics() of the background task")
    await within(monitor.stop_monitoring(), 5, "stop_monitoring()")
    pending = [t for t in asyncio.all_tasks() - tasks_before if not t.done()]
    assert source.cleaned_up and not pending, (
        "stop_monitoring() returned while the cancelled task was still cleaning up: cancel() only asks; "
        "await the task (e.g. asyncio.gather(task, return_exceptions=True)) so it has finished on return"
    )


async def test_stop_monitoring_lets_its_callers_cancellation_through(lab):
    source = SlowToStop()
    monitor = lab.PoolPerformanceMonitor(source, collection_interval=60)
    await within(monitor.start_monitoring(), 5, "start_monitoring()")
    await within(source.collecting.wait(), 5, "the first collect_metrics() of the background task")
    caller = asyncio.ensure_future(monitor.stop_monitoring())  # e.g. an application's shutdown
    await asyncio.sleep(0.05)  # stop_monitoring() has cancelled the task and waits for its cleanup
    caller.cancel()  # ... when the shutdown itself is cancelled
    await within(asyncio.wait([caller]), 5, "the cancelled stop_monitoring()")
    assert caller.cancelled(), (
        "stop_monitoring() was cancelled while it waited for the task, yet it returned normally: the caller's "
        "CancelledError was swallowed. `with suppress(CancelledError): await task` does that; "
        "`await asyncio.gather(task, return_exceptions=True)` or `await asyncio.wait([task])` let it through"
    )


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ({}, set()),
        ({"in_use": 9}, {"near_max"}),
        ({"in_use": 10, "max_size": 10}, {"near_max"}),
        ({"in_use": 8}, {"near_max"}),  # exactly at NEAR_MAX_UTILIZATION (0.8)
        ({"in_use": 2}, set()),  # exactly at UNDER_USED_UTILIZATION (0.2): not below it
        ({"cpu": 82.0, "memory": 82.0}, {"high_cpu"}),  # above the CPU threshold (80), below memory's (85)
        ({"cpu": 95.0}, {"high_cpu"}),
        ({"cpu": 80.0}, {"high_cpu"}),  # exactly at HIGH_CPU_PERCENT: at or above it
        ({"memory": 85.0}, {"high_memory"}),  # exactly at HIGH_MEMORY_PERCENT
        ({"memory": 95.0}, {"high_memory"}),
        ({"in_use": 1}, {"under_used"}),
        ({"in_use": 9, "cpu": 90.0, "memory": 90.0}, {"near_max", "high_cpu", "high_memory"}),
    ],
    ids=["balanced", "near-max", "at-max", "at-near-max-threshold", "at-under-used-threshold", "cpu-82-memory-82",
         "high-cpu", "at-cpu-threshold", "at-memory-threshold", "high-memory", "under-used", "three-at-once"],
)
def test_each_recommendation_appears_when_called_for_and_not_otherwise(lab, samples, expected):
    monitor = lab.PoolPerformanceMonitor(Silent(), collection_interval=60, history_size=100, report_window=10)
    monitor.metrics_history.extend(sample() for _ in range(20))  # older, balanced samples
    monitor.metrics_history.extend(sample(**samples) for _ in range(10))  # the recent window
    report = monitor.get_performance_report()
    got = set(report["recommendations"])
    want = {lab.RECOMMENDATIONS[name] for name in expected}
    names = {text: name for name, text in lab.RECOMMENDATIONS.items()}
    assert got == want, (
        f"for recent samples {samples or 'in balance'} expected {sorted(expected)}, "
        f"got {sorted(names.get(text, text) for text in got)}"
    )
    assert report["samples"] == 10, f"the report should average the last report_window=10 samples: {report}"


def test_report_averages_only_the_recent_window(lab):
    monitor = lab.PoolPerformanceMonitor(Silent(), collection_interval=60, history_size=100, report_window=4)
    empty = monitor.get_performance_report()
    assert empty["samples"] == 0 and empty["recommendations"] == [], f"an empty history gives an empty report: {empty}"
    monitor.metrics_history.extend(sample(cpu=99.0, in_use=10) for _ in range(10))  # an old spike
    monitor.metrics_history.extend(sample(in_use=in_use, cpu=20.0 + in_use) for in_use in (2, 4, 6, 8))
    report = monitor.get_performance_report()
    assert report["pool_utilization"] == pytest.approx(0.5), (
        f"utilisation is the average in_use / max_size of the last 4 samples (0.2, 0.4, 0.6, 0.8): {report}"
    )
    assert report["avg_cpu_percent"] == pytest.approx(25.0), f"average CPU of the last 4 samples is 25: {report}"
    assert report["recommendations"] == [], f"the old spike is outside the window: {report['recommendations']}"


def test_a_pool_that_is_not_started_counts_as_idle(lab):
    monitor = lab.PoolPerformanceMonitor(Silent(), collection_interval=60, report_window=3)
    no_pool = dict.fromkeys(("min_size", "max_size", "size", "idle", "in_use"), 0)  # lab 05 before initialize
    monitor.metrics_history.extend(
        {**sample(), "pool": {"pool_stats": dict(no_pool)}} for _ in range(3)
    )
    try:
        report = monitor.get_performance_report()
    except ZeroDivisionError:
        pytest.fail("get_performance_report() divided by max_size=0: a pool that is not started "
                    "(lab 05 reports zeros) has utilisation 0")
    assert report["pool_utilization"] == 0.0, (
        f"samples with max_size=0 (no pool yet) should count as 0 utilisation: {report['pool_utilization']}"
    )
