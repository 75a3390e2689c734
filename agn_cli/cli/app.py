"""The `agn` application: registers every command and turns errors into one-line messages.

Each command lives in its own module under `agn_cli.cli`; this file only wires them together.
"""

from __future__ import annotations

import errno
import importlib
import sys
from typing import Optional

import typer

from agn_cli import __version__
from agn_cli.cli import (
    bench,
    classify,
    data,
    demo,
    evaluate,
    info,
    localise,
    measure,
    segment,
    synth,
    train,
    weights,
)
from agn_cli.cli.console import err
from agn_cli.errors import AgnError

app = typer.Typer(
    name="agn",
    help="Attention Gated Networks for medical images: CT organ segmentation, fetal ultrasound plane detection, "
    "attention maps and boxes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """agn: Attention Gated Networks (Schlemper, Oktay et al., Medical Image Analysis 2019)."""
    _state["debug"] = debug


def _register(name: str, module, help_text: str) -> None:
    app.command(name, help=help_text, context_settings=getattr(module, "CONTEXT_SETTINGS", None))(module.command)


_register("segment", segment, "Segment abdominal organs in CT volumes (NIfTI, NRRD, MHA, DICOM).")
_register("classify", classify, "Classify fetal ultrasound frames into standard planes, optionally with boxes.")
_register("localise", localise, "Boxes from attention maps (weakly supervised localisation), with IoU against ground truth.")
_register("bench", bench, "Benchmark a network: milliseconds per forward or training step, throughput, peak memory.")
_register("info", info, "Versions, devices, registered models with parameter counts, installed weights.")
_register("demo", demo, "Run the whole tool end to end on synthetic data and write a report.")
app.add_typer(train.app, name="train", help="Train a segmentation network or a plane classifier.")
app.add_typer(measure.app, name="measure", help="Biometry: fetal head circumference in mm from ultrasound frames.")
app.add_typer(evaluate.app, name="evaluate", help="Evaluate segmentations (Dice, surface distances in mm), classifications or head circumferences.")
app.add_typer(weights.app, name="weights", help="Create, list, verify and convert checkpoints with model cards.")
app.add_typer(data.app, name="data", help="Validate datasets in nnU-Net or Medical Segmentation Decathlon layout.")
app.add_typer(synth.app, name="synth", help="Synthetic CT phantoms and ultrasound frames for tests and demos.")


def _click_exceptions():
    """The click exception module typer uses: its own vendored copy (typer >= 0.29) or click itself."""
    module_name = typer.BadParameter.__module__
    return importlib.import_module(module_name)


_CLICK = _click_exceptions()
_EXIT = tuple({typer.Exit, getattr(_CLICK, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(_CLICK, "Abort", typer.Abort)})


# a full disk, a read-only file system, a denied folder: the environment, not a bug; one line, exit 2
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _debug_requested(argv: list[str]) -> bool:
    return _state["debug"] or "--debug" in argv


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: run the app, map failures to exit codes without tracebacks.

    Exit codes: 0 success; 1 a batch with failed cases (or an unexpected error, with its traceback); 2 bad input,
    usage or environment (one line on stderr); 130 interrupted. Under `standalone_mode=False` click *returns* the
    code of a `typer.Exit` instead of exiting, so it is passed on here explicitly.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=argv, prog_name="agn", standalone_mode=False)
    except AgnError as exc:
        if _debug_requested(argv):
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except _EXIT as exc:
        code = exc.exit_code
    except _CLICK.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _ABORT:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        code = 130
    except MemoryError:
        if _debug_requested(argv):
            raise
        err.print("[red]error:[/red] out of memory; use a smaller --batch-size or patch, or free memory", highlight=False)
        sys.exit(2)
    except OSError as exc:
        if _debug_requested(argv) or exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/red] {exc.strerror or exc}{where}", highlight=False)
        sys.exit(2)
    except Exception as exc:  # torch.OutOfMemoryError and friends
        if type(exc).__name__ == "OutOfMemoryError" and not _debug_requested(argv):
            err.print(
                "[red]error:[/red] the device ran out of memory; use a smaller --batch-size, patch or window, "
                "or --device cpu",
                highlight=False,
            )
            sys.exit(2)
        raise
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:  # click turns Ctrl-C into Exit(130)
            err.print("interrupted")
        sys.exit(code)
