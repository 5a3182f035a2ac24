"""Running the `innerloop` command in-process, as the tests of several files do."""

import sys

from innerloop.cli.main import main

# a two-iteration train + eval through the CLI (the learners' own CLI tests add their small-model keys)
FAST_CLI_RUN = ["train.iterations=2", "train.val_every=2", "train.val_tasks=2", "train.checkpoint_every=2",
                "train.progress=false", "eval.tasks=4", "eval.queries=2", "eval.batch_size=4"]  # fmt: skip


def cli(monkeypatch, capsys, *args):
    """``innerloop ARGS``: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["innerloop", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
