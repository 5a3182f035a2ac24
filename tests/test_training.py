"""Training engine: exact resume, atomic checkpoints, divergence, learning."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from innerloop.errors import CheckpointError, ConfigError, TrainingDiverged
from innerloop.training import checkpoint as ckpt_module
from innerloop.training.builders import build_tasks
from innerloop.training.checkpoint import find_checkpoint, load_checkpoint
from innerloop.training.config import load_config
from innerloop.training.evaluate import evaluate_config
from innerloop.training.trainer import Trainer

QUICK = [
    "train.val_every=2",
    "train.val_tasks=10",
    "train.log_every=1",
    "train.progress=false",
    "train.meta_batch_size=5",
]


def config(tmp_path, name="run", preset="maml-sine", extra=()):
    return load_config(preset, [*QUICK, "algorithm.strategy=vmap", *extra], out_dir=str(tmp_path / name))


def weights(trainer):
    return {k: v.clone() for k, v in trainer.learner.state_dict().items()}


def wait_while_running(proc, ready, seconds: float = 240) -> None:
    """Poll until ``ready()``; fail with the training process's stderr if it exits first, or after ``seconds``."""
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(
    "preset",
    [
        "maml-sine",
        "metasgd-sine",
        "reptile-sine",
        "anil-sine",
        "pretrained-sine",
        "maml-lslr-sine",
        "maml-metacurvature-sine",
        "maml-lstm-optimizer-sine",
        "maml-meta-lstm-sine",
        "cnp-sine",
    ],
)
def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, preset):
    full = Trainer(config(tmp_path, "full", preset, ["train.iterations=6", "train.checkpoint_every=3"]))
    full.fit()
    first = Trainer(config(tmp_path, "split", preset, ["train.iterations=3", "train.checkpoint_every=3"]))
    first.fit()
    resumed = Trainer(
        config(tmp_path, "split", preset, ["train.iterations=6", "train.checkpoint_every=3"]), resume=True
    )
    assert resumed.start_iteration == 3
    resumed.fit()
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The optimizer state continued too, and the metrics log has no duplicated iterations.
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    train_iters = [json.loads(line)["iteration"] for line in lines if '"split"' not in line]
    assert train_iters == list(range(1, 7))


def test_auto_strategy_choice_is_restored_on_resume(tmp_path):
    cfg = load_config(
        "maml-sine", [*QUICK, "train.iterations=2", "train.checkpoint_every=2"], out_dir=str(tmp_path / "r")
    )
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.learner.chooser.choices  # something was measured
    resumed = Trainer(cfg, resume=True)
    assert resumed.learner.chooser.choices == trainer.learner.chooser.choices


def test_interrupted_checkpoint_write_leaves_previous_loadable(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path, extra=["train.iterations=2", "train.checkpoint_every=1"]))
    trainer.fit()
    good = find_checkpoint(tmp_path / "run")
    assert good.name == "step-00000002"

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated) halfway through the checkpoint")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)  # the weights file is already written by then
    with pytest.raises(OSError):
        trainer.save(3)
    monkeypatch.undo()
    assert find_checkpoint(tmp_path / "run") == good
    restored = load_checkpoint(tmp_path / "run")
    assert restored.iteration == 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".step-*"))  # no debris left behind


def test_kill_during_training_never_corrupts_the_latest_checkpoint(tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "innerloop",
        "train",
        "--config",
        "maml-sine",
        "--out",
        str(out),
        "--no-evaluate",
        "train.iterations=100000",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=2",
        "train.progress=false",
        "train.val_every=100000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_while_running(proc, lambda: find_checkpoint(out) is not None and load_checkpoint(out).iteration >= 5)
    time.sleep(0.123)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(out)  # loads, whatever moment the kill hit
    assert ckpt.iteration >= 5
    resumed = Trainer(
        load_config(
            "maml-sine",
            ["train.progress=false", f"train.iterations={ckpt.iteration + 2}", "train.val_every=100000"],
            out_dir=str(out),
        ),
        resume=True,
    )
    assert resumed.start_iteration == ckpt.iteration
    resumed.fit()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_the_iteration_it_interrupts_and_resume_matches_an_unbroken_run(tmp_path, sig):
    # No periodic checkpoint would come for 100000 iterations: only the stop handler can save the run.
    settings = [
        "train.progress=false",
        "train.val_every=100000",
        "train.checkpoint_every=100000",
        "train.log_every=1",
        "algorithm.strategy=vmap",
        "train.meta_batch_size=5",
    ]
    out = tmp_path / "stopped"
    cmd = [
        sys.executable,
        "-m",
        "innerloop",
        "train",
        "--config",
        "maml-sine",
        "--out",
        str(out),
        "--no-evaluate",
        "train.iterations=100000",
        *settings,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    wait_while_running(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    ckpt = load_checkpoint(out)
    assert proc.returncode == 130 and ckpt.iteration >= 5
    assert (
        f"stopped by {sig.name} after iteration {ckpt.iteration} of 100000" in err.decode()
        and "--resume" in err.decode()
    )
    # The saved state is a whole iteration: resuming gives exactly the weights of an unbroken run.
    total = [f"train.iterations={ckpt.iteration + 3}", *settings]
    resumed = Trainer(load_config("maml-sine", total, out_dir=str(out)), resume=True)
    assert resumed.start_iteration == ckpt.iteration
    resumed.fit()
    unbroken = Trainer(load_config("maml-sine", total, out_dir=str(tmp_path / "unbroken")))
    unbroken.fit()
    a, b = weights(unbroken), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume(tmp_path):
    Trainer(config(tmp_path, extra=["train.iterations=1"])).fit()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config(tmp_path, extra=["train.iterations=2"]))


def test_resume_with_another_model_is_refused(tmp_path):
    Trainer(config(tmp_path, extra=["train.iterations=1"])).fit()
    with pytest.raises(CheckpointError, match=r"model\.hidden"):
        Trainer(config(tmp_path, extra=["train.iterations=2", "model.hidden=[20]"]), resume=True)


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    trainer = Trainer(
        config(tmp_path, extra=["train.iterations=50", "train.checkpoint_every=1", "algorithm.inner_lr=1e4"])
    )
    with pytest.raises(
        TrainingDiverged, match=r"diverged at iteration 1: meta-gradient norm inf; no checkpoint was written yet"
    ):
        trainer.fit()
    assert find_checkpoint(tmp_path / "run") is None


def test_nonfinite_gradient_of_a_finite_loss_is_caught(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path, extra=["train.iterations=5", "train.checkpoint_every=1"]))
    original = trainer.learner.meta_backward

    def poisoned(batch, weight=1.0):
        metrics = original(batch, weight)
        next(trainer.learner.parameters()).grad[0] = float("nan")
        return metrics

    monkeypatch.setattr(trainer.learner, "meta_backward", poisoned)
    with pytest.raises(TrainingDiverged, match="meta-gradient norm nan"):
        trainer.fit()


def test_validation_names_the_tasks_that_diverge(tmp_path):
    """A NaN mean alone hides what happened: the record adds the median and the non-finite count."""
    val = ["train.val_tasks=40", "algorithm.eval_steps=10"]
    calm = Trainer(config(tmp_path, "calm", extra=[*val, "algorithm.inner_lr=0.05"])).validate()
    assert set(calm) == {"loss"} and calm["loss"] > 0
    wild = Trainer(config(tmp_path, "wild", extra=[*val, "algorithm.inner_lr=0.2"])).validate()
    assert not torch.isfinite(torch.tensor(wild["loss"]))
    assert 0 < wild["loss_nonfinite"] < 40 and isinstance(wild["loss_nonfinite"], int)
    assert 0 < wild["loss_median"] < float("inf")


@pytest.mark.slow
def test_maml_beats_pretrained_after_one_step(tmp_path):
    """A few hundred MAML iterations already adapt far better in one step than joint training."""
    results = {}
    for preset in ("maml-sine", "pretrained-sine"):
        cfg = load_config(
            preset,
            [
                "train.iterations=800",
                "train.progress=false",
                "train.val_every=500",
                "eval.tasks=300",
                "eval.shots=[10]",
                "eval.steps=[0,1]",
            ],
            out_dir=str(tmp_path / preset),
        )
        trainer = Trainer(cfg)
        trainer.fit()
        results[preset] = evaluate_config(trainer.learner, cfg, build_tasks)[10]
    maml, pre = results["maml-sine"], results["pretrained-sine"]
    # Adaptation actually helps MAML, and MAML after one step clearly beats the baseline after one step.
    assert maml[1]["loss"]["mean"] < 0.75 * maml[0]["loss"]["mean"]
    assert maml[1]["loss"]["mean"] < 0.85 * pre[1]["loss"]["mean"], (maml, pre)
    assert maml[1]["loss"]["mean"] + maml[1]["loss"]["ci95"] < pre[1]["loss"]["mean"] - pre[1]["loss"]["ci95"]
