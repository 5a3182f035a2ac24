"""The ``innerloop`` command: the Typer app, global options, logging, every failure as one line + exit status."""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import NoReturn

import typer

from ..errors import InnerloopError, TrainingInterrupted
from .analyze import analyze_checkpoint
from .evaluate import diversity, evaluate_checkpoint
from .info import config_command, presets
from .train import demo, launch, train

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Meta-learning on PyTorch: train, evaluate and demo."
)
_DEBUG = {"on": False}  # set by --debug (the callback below) or INNERLOOP_DEBUG=1; read by main()


def _version_text() -> str:
    import platform

    import torch

    from .._version import __version__

    return f"innerloop {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(_version_text())
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="On an error, show the full traceback instead of one line."),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the innerloop and torch versions and exit.",
    ),
) -> None:
    """Meta-learning on PyTorch: train, evaluate and demo. `innerloop config` lists every config key."""
    _DEBUG["on"] = _DEBUG["on"] or debug


# `innerloop --help` lists the commands in this order
app.command()(demo)
app.command(context_settings={"allow_extra_args": False})(train)
app.command("eval")(evaluate_checkpoint)
app.command("analyze")(analyze_checkpoint)
app.command("diversity")(diversity)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(launch)
app.command()(presets)
app.command("config")(config_command)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time (tests and tools replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines of the ``innerloop`` loggers on stderr, ``HH:MM:SS message``; warnings as one line each.

    The library itself only creates loggers (``innerloop.train``, ``innerloop.data``, ...): a
    program using it keeps control of where its messages go. Idempotent.
    """
    logger = logging.getLogger("innerloop")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        (file or sys.stderr).write(f"warning: {text}\n")

    import warnings

    warnings.showwarning = one_line_warning


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as one line on stderr (with this process's rank under torchrun) and exit with ``code``."""
    from ..training.distributed import launched_by_torchrun

    rank = f" (rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')})" if launched_by_torchrun() else ""
    if message.startswith("error: "):
        message = f"error{rank}: {message[len('error: ') :]}"
    typer.echo(_one_line(message), err=True)
    sys.exit(code)


def _os_error(err: OSError) -> tuple[str, int]:
    """An ``OSError`` that escaped as one line: what, which file, and the exit status (2 when the user can fix it)."""
    if err.strerror is None:  # raised with a message of its own (e.g. by the data loaders), which names the fix
        return f"error: {err}", 2 if isinstance(err, (PermissionError, FileNotFoundError, NotADirectoryError)) else 1
    path, what = err.filename or "", err.strerror
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"error: permission denied: {path} ({what}); write elsewhere (--out, --output) or fix the permissions", 2
    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"error: {what}: {path}; check the path", 2
    if err.errno == errno.ENOSPC:
        return (
            f"error: no space left on device{f' writing {path}' if path else ''}; free some space and retry (--resume continues)",
            1,
        )
    return f"error: {what}{f': {path}' if path else ''}", 1


def main() -> None:
    """Entry point: every failure becomes one line on stderr; exit 2 for a user's mistake, 1 for a runtime failure.

    ``innerloop --debug ...`` (or ``INNERLOOP_DEBUG=1``) re-raises instead, with the traceback.
    """
    try:  # the copy of click that Typer >= 0.20 bundles, or click itself
        from typer._click import exceptions as click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions  # type: ignore[no-redef]  # the module older Typer uses
    no_args = getattr(click_exceptions, "NoArgsIsHelpError", ())  # click >= 8.2
    _DEBUG["on"] = os.environ.get("INNERLOOP_DEBUG", "") not in ("", "0")
    configure_logging()
    try:
        code = app(standalone_mode=False, prog_name="innerloop")
    except TrainingInterrupted as stopped:  # asked for (Ctrl-C, SIGTERM), not an error: the run is saved
        typer.echo(str(stopped), err=True)
        sys.exit(130)
    except no_args as err:
        typer.echo(err.format_message())
        sys.exit(0)
    except click_exceptions.ClickException as err:  # a usage mistake: an unknown option, a missing argument
        ctx = getattr(err, "ctx", None)  # a UsageError knows the command it came from
        command = ctx.command_path if ctx is not None else "innerloop"
        _fail(f"error: {err.format_message()} (see `{command} --help`)", err.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:
        _fail("interrupted; the last checkpoint written is intact", 130)
    except InnerloopError as err:
        if _DEBUG["on"]:
            raise
        _fail(f"error: {err}", getattr(err, "exit_code", 2))
    except OSError as err:
        if _DEBUG["on"]:
            raise
        _fail(*_os_error(err))
    except Exception as err:  # a bug: still one line, and how to see more
        if _DEBUG["on"]:
            raise
        _fail(
            f"internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
            "(run with --debug for the traceback; please report it)",
            1,
        )
    sys.exit(code if isinstance(code, int) else 0)


def entry() -> NoReturn:
    """The ``innerloop`` command and ``python -m innerloop``: :func:`main`, whose exit a process that joined a process
    group takes without Python's finalisation (``exit_process``). Called in-process, ``main`` raises ``SystemExit``."""
    from ..training.distributed import exit_process

    try:
        main()
        code = 0
    except SystemExit as done:
        if isinstance(done.code, str):
            typer.echo(done.code, err=True)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    exit_process(code)


if __name__ == "__main__":
    main()
