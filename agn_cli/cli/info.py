"""`agn info`: versions, devices, models and weights."""

from __future__ import annotations

import typer
from rich.table import Table

from agn_cli.cli.console import out, print_json


def command(json_output: bool = typer.Option(False, "--json", help="Print JSON only.")) -> None:
    """Versions, devices, registered models with their paper-configuration parameter counts, installed weights."""
    from agn_cli.apps.info import system_info  # imports torch: not at start-up of every agn command

    info = system_info()
    if json_output:
        print_json(info)
        return
    out.print(
        f"agn {info['version']}  torch {info['torch']}  CUDA {info['cuda'] or '-'}  cuDNN {info['cudnn'] or '-'}  "
        f"Python {info['python']}"
    )
    devices = Table(title="Devices")
    devices.add_column("id")
    devices.add_column("name")
    for dev in info["devices"]:
        devices.add_row(dev["id"], dev["name"])
    out.print(devices)
    models = Table(title="Models (parameters in the paper configuration)")
    for column in ("name", "task", "params", "configuration"):
        models.add_column(column, justify="right" if column == "params" else "left")
    for name, row in info["models"].items():
        config = ", ".join(f"{k}={v}" for k, v in row["paper_config"].items())
        models.add_row(name, row["task"], f"{row['params']:,}", config)
    out.print(models)
    if info["weights"]:
        weights = Table(title="Installed weights")
        for column in ("path", "architecture", "task", "default"):
            weights.add_column(column)
        for w in info["weights"]:
            weights.add_row(w["path"], w["architecture"], w["task"], "yes" if w["default"] else "")
        out.print(weights)
    else:
        out.print("No weights installed (see weights/README.md).")
