"""The ``safeanchor`` command. Thin: every subcommand delegates to a module.

Command groups are the modules of this package (``cli/<group>.py`` with a ``register(app)``
function), listed in ``_COMMAND_MODULES``; as the top layer they may import any other; heavy imports (torch,
transformers) happen inside the commands so ``safeanchor --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

def debug_reraise() -> None:
    """Inside a command's ``except``: with ``--debug`` / ``SAFEANCHOR_DEBUG=1``, re-raise for the traceback."""
    if os.environ.get("SAFEANCHOR_DEBUG"):
        raise


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a user mistake (a bad config, data file, path or folder): one message, no traceback."""
    from ..configfile import ConfigError
    from ..data import DataError
    from ..methods.base import RegularizerSetupError

    return (ConfigError, DataError, RegularizerSetupError, FileExistsError, FileNotFoundError)


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
        except Exception as e:
            if os.environ.get("SAFEANCHOR_DEBUG") or not isinstance(e, user_errors()):
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)


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


_register_all()


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
