"""The benchmark's own arithmetic: percentiles, summaries, target verdicts, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.loadgen import form_fields
from bench.stack import Stack, metric_delta, parse_prometheus
from bench.stats import percentile, ratio, summarize, sustained_rate


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)


def test_percentile_of_one_value_and_bad_input() -> None:
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_reports_milliseconds_from_unsorted_seconds() -> None:
    summary = summarize([0.003, 0.001, 0.002, 0.100])
    assert summary["count"] == 4
    assert summary["p50"] == pytest.approx(2.5)
    assert summary["max"] == pytest.approx(100.0)
    assert summarize([])["p99"] is None


def test_ratio_is_none_when_a_side_is_missing() -> None:
    assert ratio(300, 100) == 3.0
    assert ratio(None, 100) is None
    assert ratio(5, 0) is None


def test_form_fields_reads_hidden_tokens_from_a_page() -> None:
    html = (
        b'<form><input id="csrf_token" name="csrf_token" type="hidden" value="abc.def">'
        b'<input type="hidden" name="idempotency_token" value="0123">'
        b'<input name="email" type="email"></form>'
    )
    assert form_fields(html) == {"csrf_token": "abc.def", "idempotency_token": "0123", "email": ""}


def test_metric_delta_sums_matching_labels_only() -> None:
    before = parse_prometheus(
        'les_cache_requests_total{region="page_output",result="hit"} 10.0\n'
        'les_cache_requests_total{region="event_details",result="hit"} 5.0\n'
        'les_cache_requests_total{region="event_details",result="miss"} 1.0\n'
    )
    after = parse_prometheus(
        "# HELP les_cache_requests_total Cache lookups\n"
        'les_cache_requests_total{region="page_output",result="hit"} 110.0\n'
        'les_cache_requests_total{region="event_details",result="hit"} 25.0\n'
        'les_cache_requests_total{region="event_details",result="miss"} 3.0\n'
    )
    assert metric_delta(before, after, "les_cache_requests_total", result="hit") == 120.0
    assert metric_delta(before, after, "les_cache_requests_total", result="miss") == 2.0
    assert metric_delta(before, after, "les_missing_total") is None
    assert metric_delta(None, after, "les_cache_requests_total") is None


def _row(scenario: str, clients: int, ops: float, post_p50: float, post_p99: float) -> dict:
    return {
        "scenario": scenario,
        "concurrency": clients,
        "ops_per_s": ops,
        "requests_per_s": ops * 3,
        "errors": 0,
        "latency_ms": {"post": {"p50": post_p50, "p95": post_p99, "p99": post_p99}},
        "loadgen_cpu_share": 0.2,
    }


def _run_header() -> dict:
    return {
        "machine": {
            "cpu_cores": 2,
            "cpu_model": "Test CPU",
            "memory_gb": 23.5,
            "python": "3.12",
            "postgresql": "15",
            "redis": "7",
            "os": "Linux",
        },
        "settings": {
            "concurrencies": [1, 32],
            "duration_s": 6,
            "warmup_s": 1,
            "web": {"description": "gunicorn gthread, 2 workers x 4 threads"},
        },
        "mode": "full",
        "started_at": "2026-01-01T00:00:00+00:00",
    }


def test_targets_are_met_missed_or_not_measured() -> None:
    results = {
        "settings": {"concurrencies": [1, 32]},
        "scenarios": [
            _row("register_free", 32, 1600.0, 10.0, 60.0),
            _row("register_free", 1, 300.0, 3.0, 6.0),
        ],
    }
    verdicts = {t["target"]: t["met"] for t in report.evaluate_targets(results)}
    assert verdicts["Registration (confirmed): registrations/s at 32 clients"] is True
    assert verdicts["Registration POST p99 at 32 clients"] is False
    assert verdicts["Registration POST p50 at 1 client"] is True
    assert verdicts["Hot event: registrations/s at 32 clients"] is None
    assert verdicts["Errors, all scenarios"] is True


def test_the_cache_hit_rate_row_is_the_lowest_of_the_read_mixs_runs() -> None:
    """Its label says which run it is: the lowest rate of the mix at any concurrency,
    not the one-client run's."""
    rows = []
    for clients, rate in ((1, 0.992), (8, 0.94), (32, 0.99)):
        row = _row("read_mix", clients, 200.0, 1.0, 2.0)
        row["cache"] = {"hit_rate": rate}
        rows.append(row)
    results = {"settings": {"concurrencies": [1, 8, 32]}, "scenarios": rows}
    [row] = [t for t in report.evaluate_targets(results) if t["target"].startswith("Cache hit")]
    assert row["target"] == "Cache hit rate in the read-heavy mix (the lowest of its runs)"
    assert row["measured"] == 94.0 and row["met"] is False


def test_the_runs_summary_line_counts_an_unmeasured_target_as_neither_met_nor_missed() -> None:
    """A run of one scenario measured one or two targets: its last line must not claim
    the others met."""
    targets = [{"met": True}, {"met": False}, {"met": None}, {"met": None}]
    assert report.target_tally(targets) == "1 met, 1 missed, 2 not measured"
    assert report.target_tally([{"met": True}, {"met": False}]) == "1 met, 1 missed"


def test_markdown_names_the_machine_and_marks_missed_targets() -> None:
    results = {
        **_run_header(),
        "scenarios": [_row("register_free", 32, 1000.0, 10.0, 60.0)],
        "baseline": {"scenarios": []},
        "vacuum": {"server_autovacuum": "off", "runs": 25, "seconds": 3.1},
    }
    results["targets"] = report.evaluate_targets(results)
    text = report.markdown(results, "bench/results/x.json")
    assert "2 CPU cores" in text
    assert "23.5 GB memory" in text
    # a reader must know the harness stood in for autovacuum, and how often
    assert "autovacuum is **off** on this server" in text
    assert "(25 times, 3.1 s in all)" in text
    assert "| Registration POST p99 at 32 clients | 60.00 ms | <= 50 ms | **missed** |" in text
    assert "| register_free | 32 | 1,000 | 3,000 | post | 10.00 | 60.00 | 60.00 | 0 |" in text


def test_the_hot_event_is_compared_with_pgbench_on_one_event_row() -> None:
    """The spread-out pgbench run is the registration rows' yardstick; the one-row run
    is the hot event's (every client queues for the same lock)."""
    pgbench_run = {"clients": 32, "tps": 800.0, "latency_ms": {"p50": 30.0, "p99": 90.0}}
    results = {
        **_run_header(),
        "scenarios": [_row("register_free", 32, 100.0, 9, 50), _row("hot_event", 32, 40.0, 9, 50)],
        "pgbench": {
            "runs": [pgbench_run | {"tps": 2000.0}],
            "one_event": [pgbench_run],
        },
    }
    results["ratios"] = ratios = report.ratios(results)
    assert ratios["vs_pgbench"]["32"]["app_share_of_pgbench"] == pytest.approx(0.05)
    assert ratios["vs_pgbench_one_event"]["32"]["app_share_of_pgbench"] == pytest.approx(0.05)
    assert ratios["vs_pgbench_one_event"]["32"]["app_registrations_per_s"] == 40.0
    text = report.markdown(results, "bench/results/x.json")
    assert "| 32 | 800 | 30.00 | 90.00 | 40.0 | 0.050 |" in text


def test_each_web_workers_share_is_shown_and_a_replaced_worker_marked() -> None:
    """An uneven split of the web's CPU between gunicorn workers (connections stay
    with the worker that accepted them) is visible in the scenario table."""
    # pid 1 was replaced during the run by pid 3; pid 2 ran throughout
    shares = Stack.worker_shares({1: 10.0, 2: 5.0}, {2: 6.9, 3: 0.1}, wall=2.0)
    assert shares == {"cores": [0.95, 0.05], "replaced": 1}

    even = _row("event_list", 32, 2000.0, 10, 40) | {
        "server_cpu_share": {"web": 1.5, "relay": 0.0, "worker": 0.01},
        "web_workers": {"cores": [0.76, 0.74], "replaced": 0},
    }
    lopsided = _row("event_detail", 32, 1100.0, 10, 40) | {
        "server_cpu_share": {"web": 1.0, "relay": 0.0, "worker": 0.0},
        "web_workers": shares,
    }
    older = _row("read_mix", 32, 400.0, 10, 40) | {
        "server_cpu_share": {"web": 1.1, "relay": 0.1, "worker": 0.3}
    }
    lines = report.scenario_table([even, lopsided, older])
    assert lines[2].endswith("| 1.50 (0.76+0.74) / 0.00 / 0.01 |")
    assert lines[3].endswith("| 1.00 (0.95+0.05*) / 0.00 / 0.00 |")
    assert lines[4].endswith("| 1.10 / 0.10 / 0.30 |")  # results recorded before


def test_the_connections_the_load_generator_opened_are_reported() -> None:
    """Clients renew their connection every few operations (so no gunicorn worker keeps
    all of them); the report says how often, and counts them per row."""
    renewing = _row("event_list", 32, 2000.0, 10, 40) | {
        "requests_per_connection": 10,
        "connects": 412,
    }
    older = _row("event_list", 8, 1500.0, 10, 40)  # recorded before: no such fields
    results = {**_run_header(), "scenarios": [renewing, older]}
    text = report.markdown(results, "bench/results/x.json")
    assert "once its connection has served 10 requests" in text
    lines = report.scenario_table([renewing, older])
    assert "| 20 % | 412 |" in lines[2]
    assert "| 20 % | - |" in lines[3]
    assert "opens a new" not in report.markdown({**_run_header(), "scenarios": [older]}, "x")


def test_the_machines_python_speed_is_reported_at_start_and_end() -> None:
    header = _run_header()
    header["machine"] |= {
        "python_yardstick_ms": {"best": 3.1, "median": 4.1},
        "python_yardstick_ms_end": {"best": 5.7, "median": 5.9},
    }
    text = report.markdown({**header, "scenarios": []}, "bench/results/x.json")
    assert "3.1 ms best, 4.1 ms median at the start; 5.7 ms best, 5.9 ms median at the end" in text
    assert "yardstick" not in report.markdown({**_run_header(), "scenarios": []}, "x")


def test_the_outbox_a_write_scenario_left_counts_against_its_rate() -> None:
    """A run that left messages behind is credited with the time the relay and workers
    took to finish them: 480 operations in 8 s, then 12 s of draining, is 24 a second."""
    behind = _row("cancel_promotion", 8, 60.0, 100, 200) | {
        "operations": 480,
        "duration_s": 8.0,
        "outbox_after": {"pending_at_end": 1377, "drained": True, "drain_s": 12.0},
    }
    current = _row("register_free", 8, 50.0, 100, 200) | {
        "operations": 400,
        "duration_s": 8.0,
        "outbox_after": {"pending_at_end": 0, "drained": True, "drain_s": 0.0},
    }
    stuck = _row("hot_event", 32, 30.0, 100, 200) | {
        "operations": 240,
        "duration_s": 8.0,
        "outbox_after": {"pending_at_end": 900, "drained": False, "drain_s": None},
    }
    older = _row("register_full", 8, 40.0, 100, 200) | {
        "outbox_after": {"pending_at_end": 12, "drained": True, "wait_s": 0.5}
    }
    assert sustained_rate(behind) == 24.0
    assert sustained_rate(current) == 50.0
    assert sustained_rate(stuck) is None
    assert sustained_rate(older) is None
    rows = [r | {"sustained_ops_per_s": sustained_rate(r)} for r in (behind, current, stuck)]
    reads = _row("event_list", 32, 900.0, 1, 2) | {"outbox_after": {"pending_at_end": 0}}
    lines = report.backlog_table([*rows, older, reads])
    assert "| cancel_promotion | 8 | 60.0 | 1,377 | 12.00 | 24.0 |" in lines
    assert "| register_free | 8 | 50.0 | 0 | 0.00 | 50.0 |" in lines
    assert "| hot_event | 32 | 30.0 | 900 | - | - |" in lines
    assert "| register_full | 8 | 40.0 | 12 | - | - |" in lines
    assert not any(line.startswith("| event_list") for line in lines)
    assert report.backlog_table([reads]) == []


def test_the_web_can_be_run_below_the_workers_priority_and_the_report_says_so() -> None:
    from bench.harness import Options

    options = Options.parse(["--web-nice", "10"])
    assert options.web.cpu_nice == 10
    assert "WEB_CPU_NICE=10" in options.web.describe()
    assert "WEB_CPU_NICE" not in Options.parse([]).web.describe()
    with pytest.raises(SystemExit):
        Options.parse(["--web-nice", "20"])


def test_a_profile_samples_cpu_by_default_and_wall_time_when_asked(tmp_path: Path) -> None:
    """``--profile`` records the thread holding the GIL (CPU); ``--profile-idle``
    every thread, waiting ones too (a request's wall time); alone it is refused."""
    from bench.harness import Options, py_spy_command

    cpu = Options.parse(["--profile", "register_free:web"])
    wall = Options.parse(["--profile", "register_free", "--profile-idle"])
    assert (cpu.profile_idle, wall.profile_idle) == (False, True)
    with pytest.raises(SystemExit):
        Options.parse(["--profile-idle"])

    out = tmp_path / "profile.txt"
    by_cpu = py_spy_command(42, 9, out)
    by_wall = py_spy_command(42, 9, out, idle=wall.profile_idle)
    assert "--gil" in by_cpu and "--idle" not in by_cpu
    assert "--idle" in by_wall and "--gil" not in by_wall
    for command in (by_cpu, by_wall):
        assert command[command.index("--pid") + 1] == "42"
        assert command[command.index("--duration") + 1] == "9"
        assert command[command.index("--output") + 1] == str(out)
        assert "--subprocesses" in command


def test_background_latency_counts_only_at_the_target_rate() -> None:
    """A low p99 at a tenth of the 500/s target does not meet the target."""

    def verdict(achieved: float, p99: float) -> dict:
        results = {
            "settings": {"concurrencies": [1, 32]},
            "scenarios": [],
            "background": {
                "target_rate_per_s": 500.0,
                "achieved_registrations_per_s": achieved,
                "commit_to_done_ms": {"p99": p99},
            },
        }
        (check,) = [
            t
            for t in report.evaluate_targets(results)
            if t["target"] == "Background: commit -> handler done p99"
        ]
        return check

    assert verdict(490.0, 300.0)["met"] is True
    assert verdict(490.0, 700.0)["met"] is False
    slow = verdict(43.8, 142.8)
    assert slow["met"] is False
    assert "not measured at the target rate" in slow["note"]


def test_the_registration_target_notes_the_rate_with_its_outbox_work_done() -> None:
    behind = _row("register_free", 32, 66.1, 200, 480) | {
        "outbox_after": {"pending_at_end": 162, "drained": True, "drain_s": 0.76},
        "sustained_ops_per_s": 59.0,
    }
    results = {"settings": {"concurrencies": [1, 32]}, "scenarios": [behind]}
    notes = {t["target"]: t["note"] for t in report.evaluate_targets(results)}
    assert notes["Registration (confirmed): registrations/s at 32 clients"].endswith(
        "; 59.0/s with the outbox work it left done"
    )
    behind["outbox_after"] = {"pending_at_end": 0, "drained": True, "drain_s": 0.0}
    notes = {t["target"]: t["note"] for t in report.evaluate_targets(results)}
    assert "outbox" not in notes["Registration (confirmed): registrations/s at 32 clients"]


def test_the_report_says_which_traces_the_run_recorded() -> None:
    """Tracing's cost depends on how many traces are recorded: the report names the
    sampler the run's processes used (the production default unless overridden)."""
    from bench.harness import tracing_setting

    default = tracing_setting({})
    assert "at most 5 new traces a second per process" in default
    assert "at most 20 " in tracing_setting({"TRACES_PER_SECOND": "20"})
    named = tracing_setting({"OTEL_TRACES_SAMPLER": "parentbased_always_on"})
    assert named == "OpenTelemetry's `parentbased_always_on` sampler"
    results = _run_header()
    results["settings"]["tracing"] = named
    markdown = report.markdown(results, "bench/results/x.json")
    assert "- Traces: OpenTelemetry's `parentbased_always_on` sampler; no collector" in markdown
