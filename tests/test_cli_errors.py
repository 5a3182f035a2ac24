"""Every CLI failure is one line (issue 18, seen 6): what is wrong and the fix, exit 2 for a user's mistake and 1
for a runtime failure, no traceback unless --debug."""

import errno
import os
import pathlib
import re

import pytest
from cli_runner import cli  # tests/cli_runner.py
from shared_data import needs_omniglot  # tests/shared_data.py

from innerloop.errors import ConfigError, DatasetError, InnerloopError

FAST = [
    "train.iterations=2",
    "train.log_every=1",
    "train.val_every=2",
    "train.val_tasks=2",
    "train.checkpoint_every=2",
    "train.meta_batch_size=2",
    "train.progress=false",
    "eval.tasks=4",
    "eval.steps=[0]",
]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")  # progress lines of the "innerloop" loggers


def one_line(err: str) -> str:
    """The failure line of stderr (progress log lines aside), asserting it is the only one and has no traceback."""
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_missing_dataset_names_the_config_keys(tmp_path, monkeypatch, capsys):
    """Seen: a traceback ending in a message about the Python argument ``download=True``."""
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "protonet-omniglot-5w1s",
        "--out",
        tmp_path / "run",
        f"task.root={tmp_path / 'empty'}",
        *FAST,
    )
    line = one_line(err)
    assert code == 2 and line.startswith("error: Omniglot ") and "is not in" in line
    assert "task.download=true" in line and "task.root=" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_loaders_raise_dataset_error(tmp_path):
    """``DatasetError`` was defined and never raised; it is still a FileNotFoundError for existing code."""
    from innerloop.data import omniglot

    with pytest.raises(DatasetError, match="download=True") as caught:
        omniglot(tmp_path, "background")
    assert isinstance(caught.value, FileNotFoundError)


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  iterations: 5\n bad: [\n")
    code, _, err = cli(monkeypatch, capsys, "train", "--config", bad, "--out", tmp_path / "run")
    line = one_line(err)
    assert code == 2 and f"config file {bad} is not valid YAML" in line and "line 3, column 2" in line


def test_a_yaml_file_that_is_not_a_mapping_is_refused(tmp_path, monkeypatch, capsys):
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    code, _, err = cli(monkeypatch, capsys, "train", "--config", listed, "--out", tmp_path / "run")
    assert code == 2 and "must hold a mapping of sections" in one_line(err)


@needs_omniglot
@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["task.ways=5000"],
            "train tasks of omniglot (task.ways=5000, task.shots=1, task.queries=5) cannot be drawn: "
            "ways=5000 but omniglot/vinyals-train 28x28 has only 4112 classes",
        ),
        (
            ["task.shots=15", "task.queries=10"],
            "(task.ways=60, task.shots=15, task.queries=10) cannot be drawn: "
            "shots + queries = 15 + 10 = 25 images per class",
        ),
        (["eval.shots=[1,18]"], "test tasks of omniglot (eval.ways=5, eval.shots=18, eval.queries=15) cannot be drawn"),
    ],
)
def test_ways_or_shots_too_large_for_the_dataset_stop_before_training(
    tmp_path, monkeypatch, capsys, overrides, message
):
    """Omniglot has 20 drawings per character: shots + queries > 20 cannot be drawn without replacement."""
    run = tmp_path / "run"
    code, _, err = cli(
        monkeypatch, capsys, "train", "--config", "protonet-omniglot-5w1s", "--out", run, *FAST, *overrides
    )
    line = one_line(err)
    assert code == 2 and message in line, line
    assert not (run / "checkpoints").exists()  # nothing trained


@needs_omniglot
def test_an_option_a_loader_refuses_names_its_config_key(tmp_path, monkeypatch, capsys):
    """Seen: an unknown split name printed as an "internal error" (exit 1) instead of a mistake naming the key."""
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "protonet-omniglot-5w1s",
        "--out",
        tmp_path / "run",
        *FAST,
        "task.train_split=foo",
    )
    line = one_line(err)
    assert code == 2 and line.startswith(
        "error: task.train_split='foo' for task.name=omniglot: unknown Omniglot split"
    ), line


def _deny_writes_under(monkeypatch, folder: pathlib.Path) -> None:
    """Make ``folder`` read-only: chmod, and for root (whom chmod does not stop) a mkdir that fails as the OS would."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self, *args, **kwargs):
            if str(self).startswith(str(folder) + os.sep):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)


def test_a_read_only_out_is_refused_in_one_line_naming_it(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    _deny_writes_under(monkeypatch, locked)
    try:
        code, _, err = cli(monkeypatch, capsys, "train", "--config", "maml-sine", "--out", locked / "run", *FAST)
    finally:
        locked.chmod(0o755)
    line = one_line(err)
    assert code == 2 and f"cannot write the run directory {locked / 'run'} (Permission denied" in line
    assert "choose a writable --out" in line


def test_an_out_below_a_file_is_refused_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    code, _, err = cli(monkeypatch, capsys, "train", "--config", "maml-sine", "--out", afile / "run", *FAST)
    assert code == 2 and f"cannot write the run directory {afile / 'run'}" in one_line(err)
    code, _, err = cli(
        monkeypatch, capsys, "train", "--config", "maml-sine", "--out", tmp_path / "a" / "b", "task.shots=0"
    )
    assert code == 2 and not (tmp_path / "a").exists()  # the write probe removes the folders it made


def test_a_garbage_state_file_is_one_line_without_torchs_advice(tmp_path, monkeypatch, capsys):
    """Seen: torch's "weights_only=False" advice (arbitrary code execution) after a 100-line traceback."""
    run = tmp_path / "run"
    code, _, err = cli(monkeypatch, capsys, "train", "--config", "maml-sine", "--out", run, *FAST, "--no-evaluate")
    assert code == 0, err
    (run / "checkpoints" / "step-00000002" / "state.pt").write_bytes(b"garbage, not a pickle")
    for args in (["eval", run], ["train", "--config", "maml-sine", "--out", run, *FAST, "--resume"]):
        code, _, err = cli(monkeypatch, capsys, *args)
        line = one_line(err)
        assert code == 2 and "state.pt is not a state file innerloop wrote" in line, line
        assert "weights_only" not in err and "step-00000002" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--config", "nope"], "error: unknown preset 'nope'; available presets: "),
        (
            ["train", "--config", "maml-sine", "train.iteratons=5"],
            "error: unknown option 'train.iteratons'; valid keys of",
        ),
        (["train"], "error: Missing option '--config' / '-c'. (see `innerloop train --help`)"),
        (["train", "--config", "maml-sine", "--bogus"], "error: No such option: --bogus"),
        (["eval"], "error: Missing argument 'checkpoint'. (see `innerloop eval --help`)"),
        (["presets", "--show", "nope"], "error: unknown preset 'nope'"),
        (["config", "--show", "maml-sine", "train.nope=1"], "error: unknown option 'train.nope'"),
    ],
)
def test_user_mistakes_are_one_line_with_status_2(tmp_path, monkeypatch, capsys, args, message):
    """Usage mistakes too: Typer's boxed, multi-line usage error was the last multi-line failure."""
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and one_line(err).startswith(message), err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    """``innerloop --debug ...`` re-raises: the exception (and so the traceback) reaches the caller."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        cli(monkeypatch, capsys, "--debug", "train", "--config", bad)
    monkeypatch.setenv("INNERLOOP_DEBUG", "1")
    with pytest.raises(ConfigError):
        cli(monkeypatch, capsys, "train", "--config", bad)


class _RuntimeFailure(InnerloopError):
    exit_code = 1


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (
            RuntimeError("boom\nsecond line"),
            1,
            "internal error: RuntimeError: boom (run with --debug for the traceback; please report it)",
        ),
        (_RuntimeFailure("it broke; do this"), 1, "error: it broke; do this"),
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/x"),
            2,
            "error: permission denied: /data/x (Permission denied); write elsewhere (--out, --output) or fix the permissions",
        ),
        (
            PermissionError("cannot write Omniglot to /d; set task.root=..."),
            2,
            "error: cannot write Omniglot to /d; set task.root=...",
        ),
    ],
)
def test_exit_status_2_for_mistakes_1_for_runtime_failures(monkeypatch, capsys, raised, code, line):
    import innerloop.training.config as config_module

    def fail():
        raise raised

    monkeypatch.setattr(config_module, "preset_names", fail)
    got, _, err = cli(monkeypatch, capsys, "presets")
    assert got == code and one_line(err) == line


def test_warnings_are_one_line_each(monkeypatch, capsys):
    """A Python warning during a command prints as ``warning: ...`` on one line, not file:line plus source."""
    import warnings

    import innerloop.training.config as config_module

    names = config_module.preset_names()

    def warn_then_list():
        warnings.warn("a cache folder is not writable;\n images are decoded again", UserWarning, stacklevel=2)
        return names

    monkeypatch.setattr(config_module, "preset_names", warn_then_list)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _out, err = cli(monkeypatch, capsys, "presets")
    assert code == 0 and set(err.splitlines()) == {"warning: a cache folder is not writable; images are decoded again"}
