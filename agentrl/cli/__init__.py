"""The ``agentrl`` command line.

Each area has its own module with a Typer sub-app (``envs.py``, ...); this module mounts them and
decides how a run ends:

* exit 0: done;
* exit 2: a user mistake, printed as one ``error:`` line and one ``hint:`` line: a usage error
  (unknown command or option, missing argument, a value of the wrong type) or an
  :class:`~agentrl.errors.AgentrlError` raised by agentrl (unknown env, bad ``-e`` value, unusable
  store, missing model, ...);
* exit 130: interrupted (Ctrl-C); ``eval`` first says what it finished and writes a partial report;
* exit 1 with a traceback: anything else, which is a bug (``AGENTRL_TRACEBACK=1`` shows the
  traceback of a user error too).

Commands with their own outcome (``envs check``, ``sandbox run``) exit with theirs.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from typing import Annotated

import typer
from rich.text import Text

from agentrl.cli import data, envs, envserve, evaluate, model, sandbox, store, train, view
from agentrl.cli.common import console, console_err, printable
from agentrl.cli.usage import click_classes, command_path, describe_usage_error
from agentrl.errors import AgentrlError

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130

app = typer.Typer(
    name="agentrl",
    help="Multi-turn text environments and reinforcement learning for LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        import agentrl

        console.print(f"agentrl {agentrl.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the progress bars and info logs of transformers and huggingface_hub.")
    ] = False,
) -> None:
    """Multi-turn text environments and reinforcement learning for LLM agents."""
    if not verbose:  # read by transformers and huggingface_hub when they are imported (nothing is imported here)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


app.add_typer(envs.app, name="envs")
app.add_typer(data.app, name="data")
app.add_typer(store.app, name="store")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(model.app, name="model")
app.command("play")(envs.play)
app.command("eval")(evaluate.eval_cmd)
app.command("serve")(model.serve)
app.command("env-serve")(envserve.env_serve)
app.command("train")(train.train)
app.command("plot")(train.plot)
app.command("view")(view.view)


def report_error(message: str, hint: str | None) -> None:
    """The two lines a user mistake prints on stderr (control characters escaped, no markup)."""
    line = Text("error: ", style="bold red").append(printable(" ".join(message.split())), style="")
    console_err.print(line, highlight=False)
    if hint:
        console_err.print(Text("hint: " + printable(" ".join(hint.split())), style="dim"), highlight=False)


def main() -> None:
    """Console entry point: run the app and turn its outcome into an exit code (see the module docstring)."""
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack: what a stuck run is doing
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    show_help = click_classes("NoArgsIsHelpError")  # click >= 8.2: a bare group raises this to show its help
    try:
        code = app(standalone_mode=False)  # a typer.Exit(code) inside a command is returned, not raised
    except AgentrlError as exc:
        if os.environ.get("AGENTRL_TRACEBACK"):
            raise
        report_error(str(exc), exc.hint)
        sys.exit(USER_ERROR_EXIT)
    except show_help as exc:
        console.print(exc.ctx.get_help(), highlight=False, markup=False)  # type: ignore[attr-defined]
        sys.exit(0)
    except click_classes("ClickException") as exc:
        report_error(*describe_usage_error(exc, command_path(typer.main.get_command(app), sys.argv[1:])))
        sys.exit(USER_ERROR_EXIT)
    except click_classes("Abort"):  # older click turns Ctrl-C (KeyboardInterrupt) into Abort
        console_err.print("interrupted", highlight=False)
        sys.exit(INTERRUPTED_EXIT)
    if code == INTERRUPTED_EXIT:  # newer typer turns Ctrl-C into this exit code
        console_err.print("interrupted", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
