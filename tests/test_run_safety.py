"""No lost work (issue 18): resume from the newest intact checkpoint, never overwrite a run or an
evaluation, follow the umask, stop in one line on a full disk or a diverging validation."""

import builtins
import errno
import hashlib
import json
import os
import socket
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py
from safetensors.torch import load_file
from shared_data import needs  # tests/shared_data.py

from innerloop.training import checkpoint as ckpt_module
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.config import load_config

TINY = [
    "train.iterations=4",
    "train.checkpoint_every=2",
    "train.meta_batch_size=2",
    "train.val_tasks=2",
    "train.val_every=2",
    "train.log_every=1",
    "train.progress=false",
    "eval.tasks=4",
    "eval.steps=[0,1]",
]


def train(monkeypatch, capsys, run, *extra, evaluate=False):
    return cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "maml-sine",
        "--out",
        run,
        *TINY,
        *extra,
        *([] if evaluate else ["--no-evaluate"]),
    )


def one_error_line(err: str) -> bool:
    """stderr ends in exactly one ``error: ...`` line (progress lines may precede it), no traceback."""
    lines = err.splitlines()
    return (
        bool(lines)
        and lines[-1].startswith("error")
        and sum(line.startswith("error") for line in lines) == 1
        and "Traceback" not in err
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes: equal snapshots mean nothing was changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def train_iterations(run: Path) -> list[int]:
    return [
        json.loads(line)["iteration"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "split" not in json.loads(line)
    ]


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    """A finished 4-iteration run with checkpoints step-2 and step-4."""
    run = tmp_path / "run"
    code, _, err = train(monkeypatch, capsys, run)
    assert code == 0, err
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    return run


def _delete_newest(step4: Path) -> str:
    for f in step4.iterdir():
        f.unlink()
    step4.rmdir()
    return "checkpoints/latest names step-00000004, which does not exist"


def _truncate_weights(step4: Path) -> str:
    data = (step4 / "weights.safetensors").read_bytes()
    (step4 / "weights.safetensors").write_bytes(data[: len(data) // 2])
    return "step-00000004: weights.safetensors is unreadable"


def _garbage_state(step4: Path) -> str:
    (step4 / "state.pt").write_bytes(b"not a torch file at all" * 10)
    return "step-00000004: state.pt is not a state file innerloop wrote"


def _state_of_another_step(step4: Path) -> str:
    (step4 / "state.pt").write_bytes((step4.parent / "step-00000002" / "state.pt").read_bytes())
    return "step-00000004: state.pt holds iteration 2, the folder name says 4"


@pytest.mark.parametrize("damage", [_delete_newest, _truncate_weights, _garbage_state, _state_of_another_step])
def test_resume_takes_the_newest_intact_checkpoint_and_loses_nothing(run, monkeypatch, capsys, damage):
    """Seen: with the newest checkpoint deleted (as the corrupt-checkpoint message advised) or
    `latest` dangling, --resume started from 0, rewrote metrics.jsonl and overwrote step-2."""
    step2, step4 = run / "checkpoints" / "step-00000002", run / "checkpoints" / "step-00000004"
    uninterrupted = {k: v.clone() for k, v in load_file(step4 / "weights.safetensors").items()}
    kept = snapshot(step2)
    why = damage(step4)
    code, out, err = train(monkeypatch, capsys, run, "--resume")
    assert code == 0, err
    line = next(text for text in out.splitlines() if text.startswith("resuming"))
    assert line.startswith(f"resuming from iteration 2 ({step2})") and why in line, out
    assert snapshot(step2) == kept  # the good older checkpoint is untouched
    assert train_iterations(run) == [1, 2, 3, 4]  # truncated back to step 2, then continued: no duplicate, no loss
    resumed = load_file(step4 / "weights.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)  # bit for bit the same run
    if damage is not _delete_newest:  # the damaged folder was set aside, not deleted
        (aside,) = (run / "checkpoints").glob("replaced-step-00000004-*")
        assert (aside / "state.pt").exists() and (aside / "weights.safetensors").exists()


def test_eval_of_a_run_whose_latest_is_gone_names_the_intact_one(run, monkeypatch, capsys):
    _delete_newest(run / "checkpoints" / "step-00000004")
    code, _, err = cli(monkeypatch, capsys, "eval", run)
    assert code == 2 and one_error_line(err) and "checkpoints/latest names step-00000004, which does not exist" in err
    assert f"the newest intact one is {run / 'checkpoints' / 'step-00000002'}" in err


@needs(find_spec("tensorboard") is not None, "tensorboard (part of the dev extra)")
def test_resume_truncates_tensorboard_too(run, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _delete_newest(run / "checkpoints" / "step-00000004")
    assert train(monkeypatch, capsys, run, "--resume")[0] == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # the old 3 and 4 purged


@needs(find_spec("tensorboard") is not None, "tensorboard (part of the dev extra)")
def test_a_resumed_event_file_sorts_after_an_older_one_of_the_same_second_and_process(tmp_path):
    """A file of this second, host and process with a larger unpadded counter (99999 > the next one's) sorts after a
    new writer's file unless truncate_after waits for the next second (then TensorBoard would not purge it)."""
    import os
    import socket
    import time

    from innerloop.training.metrics_log import MetricsLog

    log = MetricsLog(tmp_path)
    log.write({"iteration": 1, "loss": 1.0})
    older = (
        tmp_path
        / "tensorboard"
        / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.99999"
    )
    older.write_bytes(b"")
    log.truncate_after(0)
    log.write({"iteration": 1, "loss": 2.0})
    log.writer.flush()
    names = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert names[-1] != older.name and len(names) == 3, names


def test_no_intact_checkpoint_refuses_and_changes_nothing(run, monkeypatch, capsys):
    _delete_newest(run / "checkpoints" / "step-00000004")
    _truncate_weights(run / "checkpoints" / "step-00000002")
    before = snapshot(run)
    code, _out, err = train(monkeypatch, capsys, run, "--resume")
    assert code == 2 and one_error_line(err)
    assert "no intact checkpoint to resume from" in err and "step-00000002: weights.safetensors is unreadable" in err
    assert "nothing was changed" in err and snapshot(run) == before


@pytest.mark.parametrize("leftover", ["metrics.jsonl", "config.yaml", "checkpoints"])
def test_a_run_directory_in_use_is_refused_without_resume_or_overwrite(tmp_path, monkeypatch, capsys, leftover):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True) if leftover == "checkpoints" else None
    if leftover != "checkpoints":  # e.g. a run killed before its first checkpoint
        run.mkdir()
        (run / leftover).write_text('{"iteration": 1, "loss": 3.0}\n')
    before = snapshot(run)
    code, _out, err = train(monkeypatch, capsys, run)
    assert code == 2 and one_error_line(err)
    assert f"{run} already holds a run ({leftover})" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before


def test_overwrite_moves_the_old_run_aside(run, monkeypatch, capsys):
    before = snapshot(run)
    code, out, err = train(monkeypatch, capsys, run, "--overwrite", "train.iterations=2")
    assert code == 0, err
    (aside,) = run.glob("replaced-*")
    assert f"moved the previous run to {aside}" in out
    assert snapshot(aside) == before  # everything of the old run, byte for byte
    assert train_iterations(run) == [1, 2] and load_checkpoint(run).iteration == 2
    code, _, err = train(monkeypatch, capsys, run, "--overwrite", "--resume")
    assert code == 2 and "give one of them" in err


def test_pruning_after_a_resume_keeps_intact_work(tmp_path, monkeypatch, capsys):
    """Resumed from step-2 past a corrupt step-4 and step-6: saving step-4 again must not prune
    step-2 (the only other intact checkpoint), nor touch step-6 (newer than anything written)."""
    run = tmp_path / "run"
    assert train(monkeypatch, capsys, run, "train.iterations=6", "train.keep_checkpoints=3")[0] == 0
    for step in (4, 6):
        _truncate_weights(run / "checkpoints" / f"step-{step:08d}")
    step2, step6 = snapshot(run / "checkpoints" / "step-00000002"), snapshot(run / "checkpoints" / "step-00000006")
    code, out, err = train(monkeypatch, capsys, run, "--resume", "train.keep_checkpoints=2")
    assert code == 0 and "resuming from iteration 2" in out, err
    assert snapshot(run / "checkpoints" / "step-00000002") == step2
    assert snapshot(run / "checkpoints" / "step-00000006") == step6
    assert load_checkpoint(run / "checkpoints" / "step-00000004").iteration == 4


def test_a_torchrun_restart_resumes_from_the_newest_intact_checkpoint(run, monkeypatch):
    """The restart path: rank 0 of a restarted group (TORCHELASTIC_RESTART_COUNT > 0) picks the
    checkpoint and broadcasts it (here a one-process gloo group, the same code path)."""
    from innerloop.training.distributed import ProcessGroup
    from innerloop.training.trainer import Trainer

    _garbage_state(run / "checkpoints" / "step-00000004")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_RESTART_COUNT": "1",
    }.items():
        monkeypatch.setenv(key, value)
    group = ProcessGroup.from_environment("cpu", 60)
    try:
        trainer = Trainer(load_config("maml-sine", TINY, out_dir=str(run)), group=group)
        assert trainer.start_iteration == 2 and trainer.last_checkpoint == run / "checkpoints" / "step-00000002"
        assert "step-00000004: state.pt is not a state file innerloop wrote" in trainer.start_note
    finally:
        group.close()


def test_eval_writes_its_own_file_and_keeps_the_end_of_training_one(tmp_path, monkeypatch, capsys):
    """Seen: `innerloop eval RUN` replaced RUN/eval.json (1000 tasks) with a smaller protocol, unlabelled."""
    run = tmp_path / "run"
    assert train(monkeypatch, capsys, run, evaluate=True)[0] == 0
    final = (run / "eval.json").read_bytes()
    assert json.loads(final)["step"] == 4 and json.loads(final)["checkpoint"].endswith("step-00000004")
    code, out, err = cli(
        monkeypatch, capsys, "eval", run, "--tasks", 3, "--steps", 0, "--steps", 2, "--shots", 5, "--seed", 7
    )
    assert code == 0, err
    written = run / "evals" / "step-00000004-tasks3-seed7-steps0,2-shots5.json"
    assert f"results written to {written}" in out
    assert (run / "eval.json").read_bytes() == final
    import innerloop

    data = json.loads(written.read_text())
    assert data["checkpoint"] == str(run / "checkpoints" / "step-00000004") and data["step"] == 4
    assert (data["tasks"], data["seed"], data["steps"], data["shots"]) == (3, 7, [0, 2], [5])
    assert data["innerloop_version"] == innerloop.__version__ and set(data["results"]["5"]) == {"0", "2"}
    code, out, _ = cli(
        monkeypatch, capsys, "eval", run, "--tasks", 3, "--steps", 0, "--steps", 2, "--shots", 5, "--seed", 7
    )
    again = written.with_name(written.stem + "-2.json")
    assert code == 0 and f"results written to {again}" in out
    # the same protocol again: the same file contents, but for float32 rounding where `auto` timed a different
    # strategy for the evaluation batch this time (vmap and the loop agree to ~1e-7)
    first, second = json.loads(written.read_text()), json.loads(again.read_text())
    assert {k: v for k, v in first.items() if k != "results"} == {k: v for k, v in second.items() if k != "results"}
    for shots, per_step in first["results"].items():
        for step, metrics in per_step.items():
            for name, stats in metrics.items():
                assert second["results"][shots][step][name] == pytest.approx(stats, rel=1e-5), (shots, step, name)
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--tasks", 3, "--output", run / "eval.json")
    assert code == 2 and "already exists" in err and one_error_line(err) and (run / "eval.json").read_bytes() == final


def test_meta_rl_eval_writes_its_own_file(tmp_path, monkeypatch, capsys):
    small = [
        "train.iterations=2",
        "train.meta_batch_size=3",
        "rl.episodes=4",
        "rl.horizon=10",
        "model.hidden=[8]",
        "train.progress=false",
        "eval.tasks=2",
        "rl.eval_episodes=4",
        "eval.steps=[0,1]",
    ]
    run = tmp_path / "rl"
    code, _, err = cli(monkeypatch, capsys, "train", "--config", "maml-trpo-nav2d", "--out", run, *small)
    assert code == 0, err
    final = (run / "eval.json").read_bytes()
    code, out, err = cli(monkeypatch, capsys, "eval", run, "--tasks", 2, "--episodes", 3, "--lrs", 0.5, "--lrs", 0.25)
    assert code == 0, err
    written = (
        run
        / "evals"
        / "step-00000002-tasks2-seed{}-steps0,1-episodes3-lrs0.5,0.25.json".format(json.loads(final)["seed"])
    )
    assert f"results written to {written}" in out and (run / "eval.json").read_bytes() == final
    data = json.loads(written.read_text())
    assert (data["step"], data["episodes"], data["lrs"], data["steps"]) == (2, 3, [0.5, 0.25], [0, 1])
    assert (written.parent / f"{written.stem}-returns.png").exists()


@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_run_files_follow_the_umask(tmp_path, monkeypatch, capsys, umask, folder, file):
    """Seen: checkpoint folders were 0700 (tempfile.mkdtemp) whatever the umask."""
    old = os.umask(umask)
    try:
        code, _, err = train(monkeypatch, capsys, tmp_path / "run", evaluate=True)
        assert code == 0, err
        code, _, err = cli(monkeypatch, capsys, "eval", tmp_path / "run", "--tasks", 2)
        assert code == 0, err
    finally:
        os.umask(old)
    paths = [p for p in (tmp_path / "run").rglob("*") if "tensorboard" not in p.parts]
    for p in paths:
        assert p.stat().st_mode & 0o777 == (folder if p.is_dir() else file), p
    assert any(p.name == "weights.safetensors" for p in paths) and any(p.parent.name == "evals" for p in paths)


class FullDisk:
    """A file on a disk that fills up halfway through the first write."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def full_disk_for(monkeypatch, name: str, step: int) -> None:
    """Make writing file ``name`` of checkpoint ``step`` run out of space midway."""

    def fake_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (handed back to the caller, as open does)
        return FullDisk(f) if Path(path).name == name and f".step-{step:08d}." in str(path) else f

    monkeypatch.setattr(ckpt_module, "open", fake_open, raising=False)


@pytest.mark.parametrize("name", ["weights.safetensors", "state.pt"])
def test_a_full_disk_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys, name):
    run = tmp_path / "run"
    full_disk_for(monkeypatch, name, 4)
    code, _, err = train(monkeypatch, capsys, run)
    step2 = run / "checkpoints" / "step-00000002"
    assert code == 1 and one_error_line(err), err
    assert (
        f"no space left on device writing {run / 'checkpoints' / 'step-00000004' / name}; "
        f"checkpoint step 2 is intact ({step2})"
    ) in err
    assert load_checkpoint(run).path == step2 and load_checkpoint(run).iteration == 2
    assert not (run / "checkpoints" / "step-00000004").exists() and not list((run / "checkpoints").glob(".step-*"))


def test_a_full_disk_before_any_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    full_disk_for(monkeypatch, "state.pt", 2)
    code, _, err = train(monkeypatch, capsys, tmp_path / "run")
    assert code == 1 and "no space left on device writing" in err and "no checkpoint was written yet" in err


def test_a_validation_that_diverges_on_every_task_stops_the_run(tmp_path, monkeypatch, capsys):
    """Seen: training loss in the billions with validation NaN, and exit status 0."""
    run = tmp_path / "run"
    code, _, err = train(
        monkeypatch,
        capsys,
        run,
        "train.iterations=6",
        "train.val_every=4",
        "algorithm.inner_lr=0.5",
        "algorithm.eval_steps=20",
    )
    assert code == 1 and one_error_line(err), err
    assert (
        "training diverged at iteration 4: validation loss is nan on all 2 validation tasks after 20 adaptation steps"
        in err
    )
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step-00000002'}" in err
    assert load_checkpoint(run).iteration == 2  # the run stopped before saving the diverged state


def test_a_validation_where_only_some_tasks_diverge_keeps_training(tmp_path, monkeypatch, capsys):
    """The counterpart: a few non-finite tasks are recorded (median, count), training goes on."""
    run = tmp_path / "run"
    code, _, err = train(
        monkeypatch,
        capsys,
        run,
        "train.iterations=2",
        "train.val_tasks=40",
        "algorithm.inner_lr=0.2",
        "algorithm.eval_steps=10",
        "algorithm.strategy=vmap",
    )
    assert code == 0, err
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"split": "val"' in line][
        -1
    ]
    assert 0 < val["loss_nonfinite"] < 40


@pytest.mark.parametrize("name", ["weights.safetensors", "config.yaml", "../outside.bin"])
def test_a_learner_s_own_checkpoint_files_never_replace_the_checkpoint_s(tmp_path, name):
    """``learner.checkpoint_files()`` (the learned optimizer's meta.safetensors) may add files, never overwrite the
    weights, state or config, nor write outside the checkpoint folder; nothing is left behind."""
    learner = torch.nn.Linear(2, 1)
    learner.checkpoint_files = lambda: {name: b"x"}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="may not name"):
        ckpt_module.save_checkpoint(tmp_path, 1, learner, None, load_config("maml-sine"))
    assert not (tmp_path / "outside.bin").exists() and not list((tmp_path / "checkpoints").glob("step-*"))
