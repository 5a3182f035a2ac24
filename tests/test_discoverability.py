"""Discoverable (issue 18, seen 7) and readable logs (seen 8): presets with their comments, a config reference
generated from the dataclasses, --version, docstrings on the public API, plain log lines when stderr is a file."""

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py

import innerloop
from innerloop import registry
from innerloop.training.config import Config, preset_description, preset_names, preset_text
from innerloop.training.reference import config_keys, config_reference, field_comments

ROOT = Path(__file__).resolve().parents[1]


def test_presets_lists_each_preset_with_its_own_comment(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "presets")
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("`")}
    assert code == 0 and set(preset_names()) <= set(lines)
    assert (
        lines["anil-sine"].split(None, 1)[1]
        == "ANIL (Raghu et al. 2020): only the output layer adapts in the inner loop."
    )
    assert lines["maml-omniglot-5w1s"].endswith(
        "MAML on Omniglot 5-way 1-shot (Finn et al. 2017, section 5.2 and appendix A.1)"
    )
    for name in preset_names():  # every description is the head of that preset's first comment line
        first = preset_text(name).splitlines()[0].lstrip("# ")
        assert preset_description(name) and first.startswith(preset_description(name).rstrip("…")[:40]), name


def test_presets_show_prints_the_file_with_its_comments(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "presets", "--show", "maml-omniglot-5w1s")
    source = (ROOT / "innerloop" / "presets" / "maml-omniglot-5w1s.yaml").read_text()
    assert code == 0 and out == source and out.startswith("# MAML on Omniglot 5-way 1-shot")


def test_docs_config_md_is_the_generated_reference():
    """docs/config.md cannot drift from the dataclasses: regenerate it with `innerloop config > docs/config.md`."""
    assert (ROOT / "docs" / "config.md").read_text() == config_reference(), "run: innerloop config > docs/config.md"


def test_every_config_key_has_a_type_a_default_and_a_meaning():
    keys = config_keys()
    sections = [f for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING]
    expected = {f"{s.name}.{f.name}" for s in sections for f in dataclasses.fields(s.default_factory())} | {"out_dir"}
    expected |= {f"algorithm.{key}" for entry in registry.algorithms().values() for key in entry.option_names}
    assert {k.dotted for k in keys} == expected
    assert [k.dotted for k in keys if not k.meaning] == [], "give each field a trailing # comment in training/config.py"
    reference = config_reference()
    for k in keys:
        assert f"| `{k.dotted}` |" in reference
    assert (
        "| `train.log_every` | int | `10` |" in reference and "| `model.hidden` | list[int] | `[40, 40]` |" in reference
    )
    assert "| `task.root` | str or null | `null` |" in reference


# fmt: off
@dataclasses.dataclass
class Example:  # aligned continuation comments, as training/config.py writes them (unformatted there too)
    plain: int = 1  # the first key
    spaced: list[int] = dataclasses.field(default_factory=lambda: [1, 2])  # a factory default; a # inside
    # Images only:
    grouped: str | None = None  # in the group,
                                # continued on the next line
    bare: bool = False
# fmt: on


def test_field_comments_reads_trailing_comments_groups_and_continuations():

    comments = field_comments(Example)
    assert comments == {
        "plain": ("the first key", ""),
        "spaced": ("a factory default; a # inside", ""),
        "grouped": ("in the group, continued on the next line", "Images only"),
        "bare": ("", "Images only"),
    }


def test_config_command_prints_the_reference_and_a_merged_config(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "config")
    assert code == 0 and out == config_reference()
    code, out, _ = cli(monkeypatch, capsys, "config", "--show", "maml-sine", "train.iterations=7")
    assert code == 0 and "  iterations: 7\n" in out and "  inner_lr: 0.01\n" in out


def test_readme_points_to_the_config_reference():
    readme = (ROOT / "README.md").read_text()
    assert "innerloop config" in readme and "docs/config.md" in readme


def test_version(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "--version")
    assert (
        code == 0
        and out.strip()
        == f"innerloop {innerloop.__version__} (torch {torch.__version__}, "
        f"Python {'.'.join(map(str, sys.version_info[:3]))})"
    )


def _public_modules():
    for name in ("innerloop.training", "innerloop.cli", "innerloop.data"):
        package = importlib.import_module(name)
        yield package
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                yield importlib.import_module(f"{name}.{info.name}")


def test_every_public_function_class_and_method_has_a_docstring():
    """Over innerloop.training, innerloop.cli and innerloop.data; an override may inherit its base's docstring."""
    missing = []
    for module in _public_modules():
        if not module.__doc__:
            missing.append(module.__name__)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            own = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
            if not own or own.startswith(f"{name}("):  # none, or the signature dataclasses write in its place
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    func = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if not attr.startswith("_") and inspect.isfunction(func) and not inspect.getdoc(getattr(obj, attr)):
                        missing.append(f"{module.__name__}.{name}.{attr}")
    assert missing == []


@pytest.mark.parametrize("progress", ["true", "false"])
def test_logs_to_a_file_are_plain_lines_with_eta(tmp_path, progress):
    """Seen: ~750 carriage-return bar updates per 5,000 iterations in a log file, and nothing with progress=false."""
    log = tmp_path / "train.log"
    cmd = [
        sys.executable,
        "-m",
        "innerloop",
        "train",
        "--config",
        "maml-sine",
        "--out",
        str(tmp_path / "run"),
        "train.iterations=12",
        "train.log_every=4",
        "train.val_every=6",
        "train.val_tasks=2",
        "train.meta_batch_size=2",
        f"train.progress={progress}",
        "--no-evaluate",
    ]
    with open(log, "w") as stderr:
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
        )
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text
    steps = [
        int(m.group(1))
        for m in re.finditer(
            r"^\d\d:\d\d:\d\d iteration (\d+)/12  loss \S+  grad_norm \S+  "
            r"tasks/s \d+  ETA \d+:\d\d:\d\d$",
            text,
            re.M,
        )
    ]
    assert steps == [4, 8, 12], text
    assert re.findall(r"^\d\d:\d\d:\d\d validation at iteration (\d+): loss \S+$", text, re.M) == ["6", "12"], text


def test_library_users_keep_control_of_the_log(tmp_path, capsys):
    """Without the CLI nothing is configured: the lines go to the "innerloop.train" logger, not to stderr."""
    import logging

    from innerloop.training.config import load_config
    from innerloop.training.trainer import Trainer

    logger = logging.getLogger("innerloop")
    saved = logger.handlers[:], logger.level
    logger.handlers = []
    logger.setLevel(logging.NOTSET)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("innerloop.train").addHandler(handler)
    logging.getLogger("innerloop.train").setLevel(logging.INFO)
    try:
        config = load_config(
            "maml-sine",
            [
                "train.iterations=2",
                "train.log_every=1",
                "train.val_every=100",
                "train.val_tasks=2",
                "train.meta_batch_size=2",
                "train.progress=false",
            ],
            out_dir=str(tmp_path / "run"),
        )
        Trainer(config).fit()
    finally:
        logging.getLogger("innerloop.train").removeHandler(handler)
        logging.getLogger("innerloop.train").setLevel(logging.NOTSET)
        logger.handlers, _ = saved[0], logger.setLevel(saved[1])
    assert [r.split("  ")[0] for r in records[:2]] == ["iteration 1/2", "iteration 2/2"]
    assert "iteration" not in capsys.readouterr().err
