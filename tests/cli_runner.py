"""Running the `innerloop` command in-process, as the tests of several files do."""

import sys

from innerloop.cli.main import main


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
