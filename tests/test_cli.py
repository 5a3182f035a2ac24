"""The command line: smoke tests and a clear one-line error for every bad input."""

import json
import subprocess
import sys

import pytest
from cli_runner import cli  # tests/cli_runner.py
from shared_data import needs_omniglot, require_metaworld  # tests/shared_data.py

from innerloop.rl.envs.metaworld import FAMILIES as METAWORLD_FAMILIES
from innerloop.training.builders import build_learner, build_rl_learner
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.config import is_rl, load_config, preset_names

FAST = [
    "train.iterations=4",
    "train.log_every=1",
    "train.val_every=2",
    "train.val_tasks=5",
    "train.checkpoint_every=2",
    "train.progress=false",
    "eval.tasks=20",
    "eval.steps=[0,1]",
]


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, _out, err = cli(monkeypatch, capsys, "train", "--config", "maml-sine", "--out", run, *FAST)
    assert code == 0, err
    return run


def test_train_prints_eval_table_and_writes_json(trained, tmp_path):
    result = json.loads((trained / "eval.json").read_text())
    assert set(result["results"]) == {"5", "10"}
    assert set(result["results"]["5"]) == {"0", "1"}
    assert (trained / "curves.png").stat().st_size > 1000
    assert (trained / "metrics.jsonl").read_text().count("\n") >= 4


def test_eval_checkpoint(trained, tmp_path, monkeypatch, capsys):
    out_file = tmp_path / "e.json"
    code, out, err = cli(
        monkeypatch,
        capsys,
        "eval",
        trained,
        "--tasks",
        30,
        "--steps",
        0,
        "--steps",
        3,
        "--shots",
        5,
        "--output",
        out_file,
    )
    assert code == 0, err
    assert "5-shot, 3 steps" in out
    data = json.loads(out_file.read_text())
    assert data["tasks"] == 30 and set(data["results"]["5"]) == {"0", "3"}
    # Seeded: the same tasks and numbers every time.
    code, _, _ = cli(
        monkeypatch,
        capsys,
        "eval",
        trained,
        "--tasks",
        30,
        "--steps",
        0,
        "--steps",
        3,
        "--shots",
        5,
        "--output",
        tmp_path / "f.json",
    )
    assert json.loads((tmp_path / "f.json").read_text())["results"] == data["results"]


def test_presets_lists_every_preset(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "presets")
    assert code == 0
    for name in ("maml-sine", "fomaml-sine", "reptile-sine", "metasgd-sine", "anil-sine", "protonet-omniglot-5w1s"):
        assert name in out.split()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "no-such-preset"], "unknown preset 'no-such-preset'; available presets: "),
        (["--config", "maml-sine", "algorithm.name=mamml"], "algorithm.name='mamml' is not supported; choose one of"),
        (["--config", "maml-sine", "train.iteratons=5"], "unknown option 'train.iteratons'; valid keys of 'train'"),
        (["--config", "maml-sine", "algorithm.inner_steps=-1"], "algorithm.inner_steps must be >= 0"),
        (["--config", "maml-sine", "task.shots=0"], "task.shots must be a positive integer"),
        (["--config", "maml-sine", "train.meta_batch_size=0"], "train.meta_batch_size must be a positive integer"),
        (["--config", "maml-sine", "train.iterations=0"], "train.iterations must be a positive integer"),
        (["--config", "maml-sine", "train.iterations=many"], "invalid value for 'train.iterations'"),
        (["--config", "maml-sine", "iterations"], "is not of the form section.key=value"),
        (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
        (["--config", "fomaml-sine", "algorithm.checkpoint_steps=true"], "keeps no second-order inner graph"),
        (
            ["--config", "maml-sine", "algorithm.checkpoint_steps=true", "algorithm.strategy=vmap"],
            "set algorithm.strategy=loop or auto",
        ),
        (["--config", "maml-sine", "algorithm.compile=true"], "set algorithm.strategy=vmap (small models) or loop"),
        (
            ["--config", "reptile-sine", "algorithm.compile=true", "algorithm.strategy=vmap"],
            "got algorithm.name='reptile'",
        ),
    ],
)
def test_bad_train_input_gets_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    code, _out, err = cli(monkeypatch, capsys, "train", "--out", tmp_path / "x", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_rl_protocol_options_refused_for_supervised_checkpoint(trained, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "eval", trained, "--episodes", 40)
    assert code == 2 and "--episodes and --lrs set the meta-RL adaptation protocol" in err and "Traceback" not in err


def test_missing_checkpoint(tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "eval", tmp_path / "nothing")
    assert code == 2 and "no checkpoint found" in err and "Traceback" not in err


def test_corrupt_checkpoint(trained, monkeypatch, capsys):
    latest = trained / "checkpoints" / (trained / "checkpoints" / "latest").read_text().strip()
    data = (latest / "weights.safetensors").read_bytes()
    (latest / "weights.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = cli(monkeypatch, capsys, "eval", trained)
    assert code == 2 and "is corrupt or incomplete" in err and "Traceback" not in err


def test_checkpoint_for_another_model(trained, monkeypatch, capsys):
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "maml-sine",
        "--out",
        trained,
        "--resume",
        *FAST,
        "model.hidden=[20,20]",
    )
    assert code == 2 and "different configuration" in err and "model.hidden" in err


def test_diverging_training_stops_with_the_iteration(tmp_path, monkeypatch, capsys):
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "maml-sine",
        "--out",
        tmp_path / "nan",
        "--no-evaluate",
        "train.iterations=50",
        "train.progress=false",
        "train.checkpoint_every=1",
        "train.optimizer=sgd",
        "train.meta_lr=1",
    )
    assert code == 1 and "training diverged at iteration 4: meta-loss inf" in err  # a runtime failure
    assert "the last good checkpoint is" in err and "step-00000003" in err
    assert load_checkpoint(tmp_path / "nan").iteration == 3  # intact and loadable


def test_demo_prints_table_and_draws_figure(tmp_path, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "demo", "--out", tmp_path / "demo", "--iterations", 20, "--tasks", 20)
    assert code == 0, err
    assert "MAML" in out and "pretrained" in out and "10-shot, 10 steps" in out
    assert (tmp_path / "demo" / "sinusoid.png").stat().st_size > 10000
    assert set(json.loads((tmp_path / "demo" / "results.json").read_text())) == {"MAML", "pretrained"}


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "innerloop", "train", "--config", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown preset 'nope'")


@needs_omniglot
def test_protonets_learns_real_omniglot_from_the_cli(tmp_path, monkeypatch, capsys):
    """The README's command on the real data: a short run already beats chance (20%) by far."""
    run = tmp_path / "pn"
    code, out, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "protonet-omniglot-5w1s",
        "--out",
        run,
        "task.ways=20",
        "train.iterations=25",
        "train.val_every=25",
        "train.val_tasks=10",
        "train.progress=false",
        "eval.tasks=60",
    )
    assert code == 0, err
    assert "batch norm transductive" in out and "accuracy %" in out
    result = json.loads((run / "eval.json").read_text())
    accuracy = result["results"]["1"]["0"]["accuracy"]
    assert accuracy["n"] == 60 and accuracy["mean"] > 0.6, accuracy
    assert result["transductive_batch_norm"] is True
    assert (run / "episode.png").stat().st_size > 10000 and (run / "curves.png").exists()
    code, out, err = cli(monkeypatch, capsys, "eval", run, "--tasks", 60)
    written = run / "evals" / f"step-00000025-tasks60-seed{result['seed']}-steps0-shots1.json"  # eval.json is kept
    assert code == 0 and json.loads(written.read_text())["results"] == result["results"], out


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_validates_and_builds_its_learner(preset):
    # A preset is a promise to users: it must load, pass validation and build a learner with
    # meta-parameters (a typo in a field or an update rule the model cannot take fails here).
    config = load_config(preset)
    if config.task.name in METAWORLD_FAMILIES:  # the metaworld extra lives in a venv of its own
        require_metaworld()
    learner = build_rl_learner(config) if is_rl(config) else build_learner(config)
    assert sum(p.numel() for p in learner.parameters()) > 0


@pytest.mark.parametrize(
    "preset, modes",
    [("maml-sine", (False, False)), ("protonet-omniglot-5w1s", (True, False)), ("snail-omniglot-5w1s", (False, True))],
)
def test_the_result_file_names_the_batch_norm_of_the_learner(preset, modes):
    """eval.json's transductive_batch_norm / support_batch_norm come from the learner's layers (isinstance)."""
    from innerloop.cli.report import batch_norm_modes

    assert batch_norm_modes(build_learner(load_config(preset))) == modes
