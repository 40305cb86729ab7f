"""The ``safeanchor`` command. Thin: every subcommand delegates to a module.

Command groups are the modules of this package (``cli/<group>.py`` with a ``register(app)``
function), listed in ``_COMMAND_MODULES``; as the top layer they may import any other; heavy imports (torch,
transformers) happen inside the commands so ``safeanchor --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import typer


def debug_reraise() -> None:
    """Inside a command's ``except``: with ``--debug`` / ``SAFEANCHOR_DEBUG=1``, re-raise for the traceback."""
    if os.environ.get("SAFEANCHOR_DEBUG"):
        raise


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a user mistake (a bad config, option, data file, path, folder or artifact):
    one message, no traceback, exit 2. safeanchor's own checks raise ``ValueError`` subclasses
    (``ConfigError``, ``DataError``, ``ArtifactError``, ...) or ``OSError`` ones (a missing file, a
    folder that holds a finished result, no permission)."""
    from ..distributed import DuplicatedRunError
    from ..methods.base import RegularizerSetupError

    return (ValueError, OSError, RegularizerSetupError, DuplicatedRunError)


def failure_errors() -> tuple[type[BaseException], ...]:
    """Failures the run itself found, with a message that says what happened: one message, exit 1."""
    from ..evaluate.llm_judge import JudgeConnectionError, JudgeOutputError
    from ..train.trainer import ZeroPenaltyError

    return (ZeroPenaltyError, JudgeConnectionError, JudgeOutputError)


def _raised_by_safeanchor(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is safeanchor's code: its own checks say
    what is wrong; a ``ValueError`` from inside torch, transformers or numpy is more likely a bug
    (ours or theirs), and its traceback is what helps."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


_PACKAGE = Path(__file__).resolve().parents[1]


def exit_code_for(error: BaseException) -> int | None:
    """1 for a reported failure, 2 for a user mistake, ``None`` for a bug (its traceback is shown):
    a ``ValueError`` counts as a user mistake only when safeanchor raised it (an ``OSError`` always:
    a full disk or a missing file reads the same from anywhere)."""
    if isinstance(error, failure_errors()):
        return 1
    if isinstance(error, ValueError) and not _raised_by_safeanchor(error):
        return None
    if isinstance(error, user_errors()):
        return 2
    return None


def guarded(callback):
    """Wrap a command so a user mistake prints one red line and exits 2 (a reported failure: 1), in the
    installed command and under ``typer.testing.CliRunner`` alike; ``--debug`` / ``SAFEANCHOR_DEBUG=1``
    shows the traceback instead."""
    import functools

    import click

    @functools.wraps(callback)  # typer reads the options from the wrapped function's signature
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:
            code = exit_code_for(e)
            if code is None or os.environ.get("SAFEANCHOR_DEBUG"):
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(code) from None

    run.safeanchor_guarded = True
    return run


def _guard_commands(typer_app: typer.Typer) -> None:
    """Every command of ``typer_app`` and of its groups, and every group's own callback (``safeanchor
    direction`` is one), runs under :func:`guarded`."""
    infos = list(typer_app.registered_commands)
    if typer_app.registered_callback is not None:
        infos.append(typer_app.registered_callback)
    for info in infos:
        if info.callback is not None and not getattr(info.callback, "safeanchor_guarded", False):
            info.callback = guarded(info.callback)
    for group in typer_app.registered_groups:
        _guard_commands(group.typer_instance)


class _App(typer.Typer):
    """The Typer app; a user mistake prints one clear line and exits 2 (``--debug`` anywhere on the command
    line, or ``SAFEANCHOR_DEBUG=1``: the traceback)."""

    def __call__(self, *args, **kwargs):
        import signal

        def stop(signum, frame):  # SIGTERM stops like Ctrl-C: temp folders are removed on the way out
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, stop)
        argv = sys.argv
        if "--debug" in argv[1:]:  # global: show the traceback of a user mistake too (= SAFEANCHOR_DEBUG=1)
            sys.argv = [a for a in argv if a != "--debug"]
            os.environ["SAFEANCHOR_DEBUG"] = "1"
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:  # what the commands' guard did not see (e.g. typer's own parsing)
            code = exit_code_for(e)
            if os.environ.get("SAFEANCHOR_DEBUG") or code is None:
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            sys.exit(code)


app = _App(
    name="safeanchor",
    help="Fine-tune chat LLMs without losing their safety: refusal direction, ProCon, AsFT, Safe LoRA, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

_COMMAND_MODULES = [
    "safeanchor.cli.core",
    "safeanchor.cli.direction",
    "safeanchor.cli.train",
    "safeanchor.cli.evaluate",
    "safeanchor.cli.recipes",
    "safeanchor.cli.experiment",
]


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # a command group not present in this build
                continue
            raise
        module.register(app)
    _guard_commands(app)  # every command, in every group: one rule for user mistakes


_register_all()


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
