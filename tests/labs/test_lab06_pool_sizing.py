"""Checks for lab 06: pool sizing (pure functions: worked examples and properties)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

MODULE = "lab06_pool_sizing"

rates = st.floats(min_value=0.01, max_value=100_000, allow_nan=False, allow_infinity=False)
query_ms = st.floats(min_value=0.01, max_value=60_000, allow_nan=False, allow_infinity=False)
utilizations = st.floats(min_value=0.05, max_value=1.0, allow_nan=False)
PROPERTY = settings(max_examples=200, deadline=None, database=None)


@pytest.fixture(scope="module")  # module scope: hypothesis tests use it
def lab(load_lab):
    return load_lab(MODULE)


@pytest.fixture(scope="module")
def size(lab):
    """The calculator, tried once first: a TODO fails at once instead of being shrunk by hypothesis."""
    try:
        lab.calculate_optimal_pool_size(100, 50, 0.8)
    except NotImplementedError as exc:
        pytest.fail(f"not implemented yet: {exc}", pytrace=False)
    return lab.calculate_optimal_pool_size


@pytest.mark.parametrize(
    ("rps", "ms", "utilization", "expected"),
    [
        (100, 50, 0.8, (2, 7)),  # busy 5 -> 5 / 0.8 = 6.25 -> 7; min ceil(7 / 4) = 2
        (1000, 10, 0.8, (4, 13)),  # busy 10 -> 12.5 -> 13
        (100, 42, 0.6, (2, 7)),  # busy 4.2 -> exactly 7 (floating point says 7.000000000000001)
        (500, 20, 1.0, (3, 10)),  # no headroom: max = busy
        (1, 1, 0.8, (1, 1)),  # a trickle still needs one connection
        (0.0001, 0.001, 0.8, (1, 1)),  # 1e-10 busy connections: however small the load, one
        (100, 2, 0.8, (1, 1)),  # 0.2 busy: the same rate as below...
        (100, 200, 0.8, (7, 25)),  # ...with 100x longer queries needs 25x the pool
    ],
)
def test_worked_examples(lab, rps, ms, utilization, expected):
    got = lab.calculate_optimal_pool_size(rps, ms, utilization)
    busy = rps * ms / 1000
    assert got == expected, (
        f"calculate_optimal_pool_size({rps}, {ms}, {utilization}) returned {got}, expected {expected}: "
        f"Little's law gives {busy:g} busy connections (rate x seconds), max = ceil(busy / utilization), "
        f"min = ceil(max x {lab.MIN_SIZE_FRACTION})"
    )
    assert all(type(v) is int for v in got), f"sizes must be ints, got {got!r}"


def test_default_utilization_is_eighty_percent(lab):
    assert lab.calculate_optimal_pool_size(1000, 10) == (4, 13), "target_utilization should default to 0.8"
    assert lab.busy_connections(250, 40) == pytest.approx(10.0), "busy_connections(250 req/s, 40 ms) is 250 x 0.040"


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        ((0, 10), "requests_per_second"),
        ((-5, 10), "requests_per_second"),
        ((100, 0), "avg_query_time_ms"),
        ((100, -1), "avg_query_time_ms"),
        ((100, float("nan")), "avg_query_time_ms"),
        ((100, 10, 0), "target_utilization"),
        ((100, 10, 1.5), "target_utilization"),
        ((100, 10, -0.2), "target_utilization"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(lab, args, bad):
    with pytest.raises(ValueError, match=bad):
        lab.calculate_optimal_pool_size(*args)


def test_hikari_formula_counts_physical_cores(lab, monkeypatch):
    assert lab.hikari_pool_size(4, 1) == 9, "4 cores x 2 + 1 spindle = 9"
    assert lab.hikari_pool_size(8, 0) == 16, "with the data in memory (0 spindles): 8 x 2 = 16"
    assert lab.hikari_pool_size(3, 2) == 8, "3 cores x 2 + 2 spindles = 8 (an addition, whatever the bits)"
    assert lab.hikari_pool_size(1, 1) == 3, "a single core is a valid core_count: 1 x 2 + 1 = 3"
    # A machine with 4 physical cores and 8 hyper-threads.
    monkeypatch.setattr(lab.psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    monkeypatch.setattr(lab.os, "cpu_count", lambda: 8)
    got = lab.hikari_pool_size()
    assert got == 9, (
        f"on 4 physical cores with 8 hyper-threads the default should be 4 x 2 + 1 = 9, got {got}: HikariCP's "
        "core count is physical cores, psutil.cpu_count(logical=False); os.cpu_count() counts hyper-threads"
    )
    # psutil.cpu_count(logical=False) is None where psutil cannot tell the physical cores (see its docs).
    for threads, expected in [(8, 17), (None, 3)]:
        monkeypatch.setattr(lab.psutil, "cpu_count", lambda logical=True, _t=threads: _t if logical else None)
        monkeypatch.setattr(lab.os, "cpu_count", lambda _t=threads: _t)
        got = lab.hikari_pool_size()
        assert got == expected, (
            f"where psutil cannot tell the physical cores (None) and os.cpu_count() says {threads}, the default "
            f"should be {expected}, got {got}: fall back to os.cpu_count(), and to 1 core when that is None too"
        )
    for args, bad in [((0,), "core_count"), ((4, -1), "effective_spindle_count")]:
        with pytest.raises(ValueError, match=bad):
            lab.hikari_pool_size(*args)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((9, 2, 2), 2),  # 9 connections for 4 processes: 2 each (8 in all), never 3 (12 > 9)
        ((20, 1, 4), 5),
        ((9, 1), 9),  # one process takes the whole budget
        ((3, 2, 2), 1),  # fewer connections than processes: each still needs one
    ],
)
def test_the_database_total_is_shared_by_every_process(lab, args, expected):
    got = lab.per_process_pool_size(*args)
    assert got == expected, (
        f"per_process_pool_size{args} returned {got}, expected {expected}: the total is for the whole database, "
        "split it across instances x workers and round down so the processes together stay within it"
    )
    for bad_args, bad in [((0, 1, 1), "total_connections"), ((9, 0, 1), "instances"),
                          ((9, 1, 0), "workers_per_instance")]:
        with pytest.raises(ValueError, match=bad):
            lab.per_process_pool_size(*bad_args)


@PROPERTY
@given(rate=rates, ms=query_ms, utilization=utilizations)
def test_sizes_are_at_least_one_and_min_never_exceeds_max(size, rate, ms, utilization):
    min_size, max_size = size(rate, ms, utilization)
    assert 1 <= min_size <= max_size, f"({rate}, {ms}, {utilization}) gave min {min_size}, max {max_size}"
    busy = rate * ms / 1000
    assert max_size * utilization >= busy * (1 - 1e-9), (
        f"max_size {max_size} runs above the target: {busy:g} busy / {max_size} > {utilization}"
    )
    assert max_size <= max(1, math.ceil(busy / utilization * (1 + 1e-9))), (
        f"max_size {max_size} is larger than ceil(busy / utilization) for busy {busy:g}"
    )


@PROPERTY
@given(rate=rates, extra=rates, ms=query_ms, utilization=utilizations)
def test_more_load_never_shrinks_the_pool(size, rate, extra, ms, utilization):
    low = size(rate, ms, utilization)
    high = size(rate + extra, ms, utilization)
    assert high[0] >= low[0] and high[1] >= low[1], f"{rate} -> {rate + extra} req/s shrank the pool: {low} -> {high}"


@PROPERTY
@given(rate=rates, ms=query_ms, extra=query_ms, utilization=utilizations)
def test_longer_queries_never_shrink_the_pool(size, rate, ms, extra, utilization):
    short = size(rate, ms, utilization)
    long = size(rate, ms + extra, utilization)
    assert long[0] >= short[0] and long[1] >= short[1], (
        f"queries of {ms} -> {ms + extra} ms shrank the pool: {short} -> {long} (does the formula use query time?)"
    )
