"""The speed suite (benchmarks/speed/): its gradient-agreement check catches a wrong
implementation, its timing interleaves the impls, ``--quick`` on one small workload runs and
reports every field, and both of its commands start from any directory."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_suite():
    """The package benchmarks/speed/ under a private name (benchmarks/ stays off sys.path)."""
    name = "innerloop_speed_suite"
    if name not in sys.modules:
        folder = ROOT / "benchmarks" / "speed"
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its submodules and dataclasses look it up while they are built
        spec.loader.exec_module(module)
    return sys.modules[name]


speed = load_suite()


def tiny_sine(steps=1, first_order=False, tasks=3):
    return speed.build_maml("sine", steps, first_order, tasks=tasks)


def test_every_implementation_agrees_on_a_small_sine_batch():
    workload = tiny_sine(steps=2)
    errors = speed.check_gradients(workload, tasks=3)
    expected = {
        "innerloop vmap",
        "innerloop loop",
        "innerloop auto",
        "innerloop loop+checkpoint",
        "innerloop vmap+compile",
    }
    expected |= {"higher"} if speed.higher else set()
    assert set(errors) == expected
    assert all(e["rel_err"] < 1e-10 for e in errors.values())


@pytest.mark.parametrize("wrong", ["first order", "inner rate", "no 1/T"])
def test_gradient_check_fails_loudly_on_a_wrong_implementation(wrong):
    workload = tiny_sine(steps=1)
    if wrong == "first order":  # drops MAML's second-order term: a small but real difference
        workload.impls["wrong"] = lambda m: speed.PlainMAML(m, 0.01, 1, first_order=True)
    elif wrong == "inner rate":
        workload.impls["wrong"] = lambda m: speed.PlainMAML(m, 0.011, 1, first_order=False)
    else:

        class Summed(speed.PlainMAML):  # sums the task losses instead of averaging them
            def step(self, batch):
                for i in range(batch.num_tasks):
                    super().step(batch[i])

        workload.impls["wrong"] = lambda m: Summed(m, 0.01, 1, first_order=False)
    with pytest.raises(speed.GradientMismatch, match="wrong: relative error") as err:
        speed.check_gradients(workload, tasks=3)
    assert "innerloop" not in str(err.value)  # only the wrong one is named


def test_gradient_check_catches_maml_posing_as_anil():
    """A 'naive ANIL' that adapts the body too is MAML, not ANIL: the check must say so."""
    workload = speed.build_anil(steps=1, tasks=1, quick=True)
    workload.impls = {name: workload.impls[name] for name in ("plain loop", "naive ANIL", "innerloop loop")}
    assert set(speed.check_gradients(workload, tasks=1)) == {"naive ANIL", "innerloop loop"}
    workload.impls["naive ANIL"] = lambda m: speed.PlainMAML(m, 0.4, 1, first_order=False)
    with pytest.raises(speed.GradientMismatch, match="naive ANIL"):
        speed.check_gradients(workload, tasks=1)


def test_main_exits_nonzero_before_timing_on_a_mismatch(monkeypatch, capsys):
    def broken(**kwargs):
        workload = tiny_sine(**{k: v for k, v in kwargs.items() if k == "tasks" and v})
        workload.impls["broken"] = lambda m: speed.PlainMAML(m, 0.02, 1, first_order=False)
        return workload

    monkeypatch.setitem(speed.WORKLOADS, "sine-maml-1step-2nd", broken)
    monkeypatch.setattr(speed.cli, "measure_peaks", lambda device, quick: {"matmul": 1.0, "conv": 1.0})
    with pytest.raises(SystemExit) as exit_:
        speed.main(["--quick", "--workloads", "sine-maml-1step-2nd", "--tasks", "3"])
    assert exit_.value.code == 2
    assert "GRADIENT MISMATCH" in capsys.readouterr().err


def test_higher_column_is_skipped_with_a_note_when_higher_is_missing(monkeypatch):
    monkeypatch.setattr(speed.impls, "higher", None)
    monkeypatch.setattr(speed.impls, "HIGHER_MISSING", "higher is not installed")
    workload = tiny_sine()
    assert "higher" not in workload.impls
    assert workload.skipped["higher"] == "higher is not installed"


def test_quick_run_on_one_small_workload_reports_every_field(tmp_path, capsys):
    out = tmp_path / "speed.json"
    report = speed.main(
        [
            "--quick",
            "--workloads",
            "sine-maml-1step-2nd",
            "--tasks",
            "5",
            "--repeats",
            "2",
            "--json",
            str(out),
            "--markdown",
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["quick"] and report["device"] == "cpu" and report["torch"] == torch.__version__
    assert report["command"].startswith("python benchmarks/speed --quick")
    assert report["settings"]["timer"].startswith("torch.utils.benchmark")
    assert report["peak"]["matmul"] > 0 and report["peak"]["conv"] > 0
    (workload,) = report["workloads"]
    assert workload["name"] == "sine-maml-1step-2nd" and workload["tasks"] == 5
    assert workload["gradient_check"]["dtype"] == "float64" and workload["gradient_check"]["errors"]
    impls = {r["impl"]: r for r in workload["results"]}
    assert {"innerloop vmap", "innerloop loop", "innerloop auto", "plain loop"} <= set(impls)
    assert ("higher" in impls) == (speed.higher is not None)
    for row in impls.values():
        assert len(row["times_ms"]) == 2 and row["median_ms"] > 0  # one block per round
        assert row["median_ms"] == pytest.approx(sum(row["times_ms"]) / 2)
        assert row["iqr_ms"] == pytest.approx(abs(row["times_ms"][0] - row["times_ms"][1]) / 2)
        assert row["tasks_per_s"] == pytest.approx(5e3 / row["median_ms"])
        assert isinstance(row["peak_mem_mib"], float) and row["memory_method"]  # the probe itself: below
        assert row["gflop_per_task"] > 0 and row["gflops"] > 0 and row["fraction_of_peak"] > 0
        assert row["speedup_innerloop_auto"] > 0 and row["speedup_innerloop_best"] > 0
    assert impls["innerloop auto"]["speedup_innerloop_auto"] == 1.0
    (chosen,) = set(impls["innerloop auto"]["chosen"].values())  # which strategy auto picked
    # Counted after auto has chosen: the FLOPs of that strategy, not of its timing trial.
    assert impls["innerloop auto"]["gflop_per_task"] == pytest.approx(impls[f"innerloop {chosen}"]["gflop_per_task"])
    # The same FLOPs for the same algorithm (matrix products of a per-task loop).
    assert impls["plain loop"]["gflop_per_task"] == pytest.approx(impls["innerloop loop"]["gflop_per_task"])
    table = capsys.readouterr().out
    assert "| workload | implementation | ms / step (median) | IQR (ms) | tasks/s |" in table
    assert "`sine-maml-1step-2nd` | plain loop |" in table and "torch " + torch.__version__ in table


def test_the_memory_probe_sees_what_a_step_allocates():
    """peak_mem_mib is measured, not assumed: 64 MiB held inside the probe show as at least 60 MiB of growth."""
    with speed.MemoryProbe(torch.device("cpu")) as probe:
        held = torch.ones(16 * 2**20)  # 64 MiB of float32, written so its pages are resident
        assert float(held[-1]) == 1.0
    del held
    assert probe.bytes >= 60 * 2**20, (probe.bytes, probe.method)


def test_timing_rounds_interleave_the_impls_and_measure_what_they_run():
    """Each round times every impl once, in turn; medians are those of the statements' own durations."""
    calls: list[str] = []

    def nap(name, seconds):
        calls.append(name)
        time.sleep(seconds)

    timers = {
        name: speed.measure._timer("nap(name, seconds)", "naps", name, nap=nap, name=name, seconds=seconds)
        for name, seconds in (("short", 0.02), ("long", 0.06))
    }
    measured = speed.time_round_robin(timers, rounds=3)
    assert [len(m.times) for m in measured.values()] == [3, 3]
    assert measured["short"].median == pytest.approx(0.02, rel=0.5)
    assert measured["long"].median == pytest.approx(0.06, rel=0.5)
    assert measured["long"].median > 2 * measured["short"].median
    # blocked_autorange sizes its block with one untimed call, then times one block of one call
    assert calls == ["short", "short", "long", "long"] * 3


@pytest.mark.parametrize("command", [["benchmarks/speed"], ["-m", "benchmarks.speed"]])
def test_both_commands_start_from_the_repository_root(command):
    result = subprocess.run(
        [sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--min-run-time" in result.stdout and "blocked_autorange" in result.stdout
