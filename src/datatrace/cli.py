"""The ``datatrace`` command line."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Training-data attribution for PyTorch models.", no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """datatrace: score every training example by how much it caused a prediction, and measure how right that is."""


@app.command()
def demo(
    out: Path = typer.Option(Path("datatrace-demo"), help="Directory for report.html and config.yaml."),
    subsets: int = typer.Option(64, min=2, help="Retrained subsets for the LDS ground truth."),
    workers: int = typer.Option(2, min=1, help="Processes for retraining."),
    quiet: bool = typer.Option(False, help="No progress bars or tables."),
) -> None:
    """Attribute a digits MLP's test predictions with TRAK and Grad-Cos, check them by retraining, write a report."""
    from .apps.demo import run_demo

    run_demo(out, n_subsets=subsets, workers=workers, verbose=not quiet)


if __name__ == "__main__":
    app()
