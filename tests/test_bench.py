"""The benchmark harness (semid_fast.bench): row groups and kinds, the table, JSON and chart,
and that a run cut short keeps the rows it finished. The timings themselves are not checked:
this machine is shared."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import semid_fast.bench
from semid_fast.bench import FAMILIES, harness
from semid_fast.bench import main as bench_main

# A family of sleeps: a reference, one of ours and a peer, then (with TINY_SLOW_S set) one row
# that sleeps that long, standing in for a long native call.
TINY_FAMILY = textwrap.dedent('''
    import os
    import time

    from semid_fast.bench.harness import Case


    def _sleep(seconds):
        return lambda: (lambda: time.sleep(seconds))


    def cases(device, quick):
        common = dict(family="tiny", op="sleep", shape="tiny", device=device)
        rows = [Case(impl="reference", backend="reference", setup=_sleep(2e-3), **common),
                Case(impl="cpu", backend="cpu", setup=_sleep(1e-3), **common),
                Case(impl="a peer", setup=_sleep(4e-3), **common)]
        if os.environ.get("TINY_SLOW_S"):
            rows.append(Case(family="tiny", op="long call", shape="tiny", impl="a peer",
                             baseline=None, device=device,
                             setup=_sleep(float(os.environ["TINY_SLOW_S"]))))
        return rows
''')


@pytest.fixture
def tiny_family(tmp_path, monkeypatch):
    folder = tmp_path / "family"
    folder.mkdir()
    (folder / "tiny_bench_family.py").write_text(TINY_FAMILY)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(FAMILIES, "tiny", "tiny_bench_family")
    return folder


def _case(impl, kind="", backend=None, baseline="reference", op="op", shape="s"):
    return harness.Case(family="f", op=op, shape=shape, impl=impl, setup=lambda: None,
                        backend=backend, kind=kind, baseline=baseline)


def test_kind_follows_the_backend_unless_given():
    assert _case("reference", backend="reference").kind == "reference"
    assert _case("cpu", backend="cpu").kind == "ours"
    assert _case("faiss").kind == "peer"
    assert _case("SemanticIDLogitsProcessor", kind="ours").kind == "ours"
    with pytest.raises(ValueError, match="kind"):
        _case("x", kind="mine")


def test_check_groups_wants_one_baseline_that_is_a_row():
    harness.check_groups([_case("reference", backend="reference"), _case("cpu", backend="cpu")])
    with pytest.raises(ValueError, match="several baselines"):
        harness.check_groups([_case("reference"), _case("cpu", baseline="torch")])
    with pytest.raises(ValueError, match="none of its rows"):
        harness.check_groups([_case("cpu", backend="cpu")])
    harness.check_groups([_case("cpu", baseline=None)])  # a group may have no baseline


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_cases_form_valid_groups(family):
    import importlib

    cases = importlib.import_module(FAMILIES[family]).cases("cpu", True)
    harness.check_groups(cases)
    for c in cases:
        if c.backend == "reference":
            assert c.kind == "reference", c.label
        if c.impl.startswith("SemanticIDLogitsProcessor") and "torch path" not in c.impl:
            assert c.kind == "ours", c.label  # our API object, not a peer


def test_speedups_read_against_the_group_baseline():
    rows = [harness.Result(_case("cpu", backend="cpu", baseline="a peer"), "ok",
                           times_s=(1.0, 1.0, 1.0)),
            harness.Result(_case("a peer", baseline="a peer"), "ok", times_s=(4.0, 4.0)),
            harness.Result(_case("reference", backend="reference", baseline="a peer"), "ok",
                           times_s=(8.0,)),
            harness.Result(_case("cpu", backend="cpu", op="other"), "ok", times_s=(1.0,))]
    harness.fill_comparisons(rows)
    assert [r.speedup for r in rows] == [4.0, 1.0, 0.5, None]  # 'other' lacks its baseline
    table = harness.format_table(rows)
    assert "base" in table and "4.00x" in table and "0.50x" in table


def test_rows_are_read_against_the_group_floor():
    floor = _case("floor: read once", kind="floor")
    rows = [harness.Result(_case("reference", backend="reference"), "ok", times_s=(8.0,)),
            harness.Result(_case("cpu", backend="cpu"), "ok", times_s=(3.0,)),
            harness.Result(floor, "ok", times_s=(2.0,)),
            harness.Result(_case("cpu", backend="cpu", op="other"), "ok", times_s=(1.0,))]
    harness.fill_comparisons(rows)
    assert [r.over_floor for r in rows] == [4.0, 1.5, None, None]  # 'other' has no floor
    assert rows[1].to_json()["times_floor"] == 1.5
    table = harness.format_table(rows)
    assert "x floor" in table and "1.50x" in table and "floor: read once" in table


def test_per_call_rows_report_the_median_call():
    """One slow call in each run of PER_CALL_RUN (a preemption) does not move the median."""
    calls = []

    def fn():
        calls.append(None)
        if len(calls) % harness.PER_CALL_RUN == 0:
            time.sleep(2e-3)
    runs, timed = harness.measure(fn, "cpu", 0.01, per_call=True)
    assert timed == len(runs) * harness.PER_CALL_RUN and timed >= harness.PER_CALL_RUN
    assert max(runs) < 1e-3


def test_run_cases_writes_after_each_row():
    seen = []
    cases = [_case("reference", backend="reference"), _case("cpu", backend="cpu"),
             _case("broken", kind="peer")]
    cases[0].setup = cases[1].setup = lambda: (lambda: sum(range(100)))
    cases[2].setup = lambda: 1 / 0
    results, interrupted = harness.run_cases(cases, 0.01,
                                             on_row=lambda rows: seen.append(len(rows)))
    assert not interrupted and seen == [1, 2, 3]
    assert [r.status for r in results] == ["ok", "ok", "error"]
    assert "ZeroDivisionError" in results[2].note
    assert results[0].calls >= len(results[0].times_s) >= 1
    assert results[0].speedup == 1.0 and results[1].speedup is not None


def test_bench_writes_table_json_and_chart(tiny_family, tmp_path, capsys):
    out = tmp_path / "out"
    status = bench_main(["bench", "--families", "tiny", "--device", "cpu", "--out", str(out),
                         "--min-time", "0.02"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "a peer" in printed and "base" in printed and "kind" in printed
    payload = json.loads((out / "semid_fast_bench.json").read_text())
    assert payload["complete"] is True
    assert [(r["impl"], r["kind"]) for r in payload["results"]] == [
        ("reference", "reference"), ("cpu", "ours"), ("a peer", "peer")]
    assert all(r["status"] == "ok" and r["median_s"] > 0 for r in payload["results"])
    pytest.importorskip("matplotlib")
    assert (out / "semid_fast_bench.png").stat().st_size > 0


def test_ctrl_c_stops_at_once_and_keeps_the_finished_rows(tiny_family, tmp_path):
    """SIGINT while a row is inside a long call that no exception can stop: the process ends
    within seconds, prints the table and leaves the rows it finished in the JSON."""
    out = tmp_path / "out"
    env = dict(os.environ, TINY_SLOW_S="600",
               PYTHONPATH=os.pathsep.join([str(tiny_family), os.environ.get("PYTHONPATH", "")]))
    code = ("import sys, semid_fast.bench as b; b.FAMILIES['tiny'] = 'tiny_bench_family'; "
            f"sys.exit(b.main(['bench', '--families', 'tiny', '--device', 'cpu', '--out', "
            f"{str(out)!r}, '--min-time', '0.02']))")
    # From tmp_path: from the repository root, `python -c` would import the source tree (which
    # has no built extension, so the cpu row would be skipped) instead of the installed package.
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    json_path = out / "semid_fast_bench.json"
    deadline = time.monotonic() + 300  # importing torch on a loaded machine
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if json_path.is_file() and len(json.loads(json_path.read_text())["results"]) == 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the first rows never came: {proc.communicate(timeout=30)}")
        time.sleep(1.0)  # the worker is now inside the 600 s call
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - interrupted < 30, "Ctrl-C waited for the running call"
    assert proc.returncode == 130, stderr
    assert "interrupted: 3 of 4 rows measured" in stdout
    assert "a peer" in stdout  # the table of the finished rows
    payload = json.loads(json_path.read_text())
    assert payload["complete"] is False and payload["settings"]["interrupted"] is True
    assert [r["impl"] for r in payload["results"]] == ["reference", "cpu", "a peer"]
    assert all(r["status"] == "ok" for r in payload["results"]), payload["results"]


def test_bench_rejects_bad_arguments(tmp_path):
    for argv in (["--families", "nope"], ["--min-time", "0"], ["--systems", "rpg"]):
        with pytest.raises(SystemExit):
            bench_main(["bench", "--out", str(tmp_path), *argv])


def test_the_package_holds_no_e2e_pipelines():
    """The pipelines train models: they live in benchmarks/e2e/, outside the wheel."""
    package = Path(semid_fast.bench.__file__).parent
    assert not (package / "e2e").exists()
    assert not [p for p in package.glob("*.py") if "RQVAE" in p.read_text()]


def test_scaling_slopes_read_the_growth_of_a_line():
    from semid_fast.bench import scaling

    def line(times):
        return [scaling.Point("op", "impl", "ours", 1, n, "ok", [t]) for n, t in times]

    linear = scaling.slopes(line([(10, 1.0), (100, 10.0), (1000, 100.0)]))
    assert linear["slope"] == pytest.approx(1.0) and linear["slope_last"] == pytest.approx(1.0)
    bent = scaling.slopes(line([(10, 1.0), (100, 10.0), (1000, 1000.0)]))
    assert bent["slope_last"] == pytest.approx(2.0) and 1.0 < bent["slope"] < 2.0
    skipped = scaling.Point("op", "impl", "ours", 1, 10_000, "skipped", note="over the cap")
    assert scaling.slopes(line([(10, 1.0)]) + [skipped])["slope"] is None


def test_scaling_sweep_writes_table_json_and_chart(tmp_path, monkeypatch, capsys):
    from semid_fast.bench import scaling

    monkeypatch.setitem(scaling.SIZES, True, (300, 3_000))
    out = tmp_path / "scaling"
    status = bench_main(["bench", "--scaling", "--quick", "--out", str(out),
                         "--min-time", "0.005"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "slope" in printed and "N=3,000" in printed
    payload = json.loads((out / "semid_fast_scaling.json").read_text())
    assert payload["complete"] is True and payload["settings"]["sizes"] == [300, 3_000]
    ops = {"rq_encode", "pq_encode", "holistic_topk", "SemanticIDTrie.from_codes"}
    assert {p["op"] for p in payload["points"]} == ops
    assert {p["threads"] for p in payload["points"]} == set(scaling.THREADS)
    # Every line is ours, a peer or the reference at both sizes and thread counts.
    for line in payload["lines"]:
        mine = [p for p in payload["points"] if (p["op"], p["impl"], p["threads"]) ==
                (line["op"], line["impl"], line["threads"])]
        assert [p["n"] for p in mine] == [300, 3_000]
        if all(p["status"] == "ok" for p in mine):
            assert line["points"] == 2 and isinstance(line["slope"], float)
            assert all(p["median_s"] > 0 for p in mine)
        else:  # only a missing peer may skip
            assert all("not installed" in p["note"] for p in mine if p["status"] != "ok")
    assert {(line["op"], line["kind"]) for line in payload["lines"]} >= {
        (op, "ours") for op in ops}
    pytest.importorskip("matplotlib")
    assert (out / "semid_fast_scaling.png").stat().st_size > 0


def test_scaling_skips_a_size_over_the_memory_cap(tmp_path, monkeypatch):
    from semid_fast.bench import scaling

    monkeypatch.setitem(scaling.SIZES, True, (300,))
    monkeypatch.setattr(scaling, "memory_bytes", lambda: 4.0 * 300 * scaling.D)  # x alone fills it
    out = tmp_path / "scaling"
    assert bench_main(["bench", "--scaling", "--quick", "--out", str(out),
                       "--min-time", "0.005"]) == 0
    points = json.loads((out / "semid_fast_scaling.json").read_text())["points"]
    encode = [p for p in points if p["op"] in ("rq_encode", "pq_encode")]
    assert encode and all(p["status"] == "skipped" and "cap" in p["note"] for p in encode)
