"""The `agn` application: registers every command and turns errors into one-line messages.

Each command lives in its own module under `agn_cli.cli`; this file only wires them together.
"""

from __future__ import annotations

import sys
from typing import Optional

import importlib

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
app.add_typer(evaluate.app, name="evaluate", help="Evaluate segmentations (Dice, surface distances in mm) or classifications.")
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


def _debug_requested(argv: list[str]) -> bool:
    return _state["debug"] or "--debug" in argv


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: run the app, map failures to exit codes without tracebacks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=argv, prog_name="agn", standalone_mode=False)
        if isinstance(code, int) and code:  # click returns a command's `typer.Exit(code)` without standalone mode
            sys.exit(code)
    except AgnError as exc:
        if _debug_requested(argv):
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except _EXIT as exc:
        sys.exit(exc.exit_code)
    except _CLICK.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _ABORT:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except MemoryError:
        if _debug_requested(argv):
            raise
        err.print("[red]error:[/red] out of memory; use a smaller --batch-size or patch, or free memory", highlight=False)
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
