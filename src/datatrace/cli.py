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


@app.command()
def bench(
    name: str = typer.Argument(None, help="Built-in benchmark, e.g. digits-mlp; omit to list benchmarks and methods."),
    methods: str = typer.Option("graddot,trak", help="Comma-separated method names, e.g. graddot,tracin,trak,trak-5."),
    json_out: Path = typer.Option(None, "--json", help="Write the results as JSON here."),
    report_out: Path = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
    workers: int = typer.Option(2, min=1, help="Processes retraining for the ground truth (first use only)."),
    backend: str = typer.Option("local", help="Retraining backend: local or ray."),
    subsets: int = typer.Option(None, min=2, help="Override the benchmark's number of ground-truth subsets."),
    measurement: str = typer.Option("loss", help="What is attributed: loss or margin."),
    correlation: str = typer.Option("spearman", help="LDS correlation: spearman or kendall."),
    ground_truth: Path = typer.Option(None, help="Use this ground-truth store directory instead of the cache."),
    quiet: bool = typer.Option(False, help="No progress bars or tables."),
) -> None:
    """Run attribution methods on a built-in benchmark: LDS ± CI, noise ceiling, time, memory, storage."""
    from rich.console import Console
    from rich.table import Table

    from .benchmarks import BENCHMARKS
    from .benchmarks.methods import method_descriptions
    from .benchmarks.run import print_table, report_html, run_bench
    from .errors import DatatraceError

    console = Console(quiet=quiet)
    if not console.is_terminal:
        console.width = 120  # logs and pipes: wide enough for the results table
    if name is None:
        listing = Table(title="benchmarks and methods (datatrace bench NAME --methods a,b,c)")
        for col in ("kind", "name", "description"):
            listing.add_column(col)
        for b in BENCHMARKS.values():
            listing.add_row("benchmark", f"{b.name} v{b.version}", b.description)
        for method, description in sorted(method_descriptions().items()):
            listing.add_row("method", method, description)
        console.print(listing)
        return
    try:
        result = run_bench(
            name,
            methods,
            workers=workers,
            n_subsets=subsets,
            measurement=measurement,
            correlation=correlation,
            backend=backend,
            ground_truth=ground_truth,
            verbose=not quiet,
        )
    except DatatraceError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(2) from e
    print_table(result, console)
    if json_out:
        result.to_json(json_out)
        console.print(f"results: {json_out}")
    if report_out:
        report_out.write_text(report_html(result))
        console.print(f"report: {report_out}")


@app.command("select")
def select_command(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML file with SelectConfig keys."),
    quiet: bool = typer.Option(False, help="No progress bars or tables."),
) -> None:
    """Select training data for a target domain with each method; train on each selection; compare with random."""
    from .apps.experiments import SelectConfig, load_config, run_select

    cfg = _run_or_exit(load_config, config, SelectConfig)
    results = _run_or_exit(run_select, cfg, verbose=not quiet)
    accuracy = "next-token accuracy" if results["accuracy"] == "next-token" else "accuracy"
    header = ["selection", "target loss", "95% CI", accuracy, "95% CI"]
    rows = [
        [r["selection"], f"{r['loss']:.4f}", _ci(r["loss_ci"]), f"{r['accuracy']:.3f}", _ci(r["accuracy_ci"])]
        for r in results["rows"]
    ]
    _print_table(f"data selection, budget {cfg.budget}, {len(cfg.seeds)} seeds", header, rows, quiet)
    typer.echo(f"results: {Path(cfg.out) / 'results.json'}; report: datatrace report {Path(cfg.out) / 'run'}")


@app.command("contamination")
def contamination_command(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML file with ContaminationConfig keys."),
    quiet: bool = typer.Option(False, help="No progress bars or tables."),
) -> None:
    """Plant copies of test items in the training data, train, and measure how well each method finds them."""
    from .apps.experiments import ContaminationConfig, load_config, run_contamination

    cfg = _run_or_exit(load_config, config, ContaminationConfig)
    by_kind, _ = _run_or_exit(run_contamination, cfg, verbose=not quiet)
    for kind, result in by_kind.items():
        header = ["method", *[f"R@{k}" for k in result.ks], "MRR", "95% CI"]
        rows = [
            [r["method"], *[f"{r[f'R@{k}']:.3f}" for k in result.ks], f"{r['MRR']:.3f}", _ci(r["MRR_ci"])]
            for r in result.rows()
        ]
        title = f"contamination audit, {kind} copies: {result.metadata['n_items']} items × {cfg.copies} copies"
        _print_table(title, header, rows, quiet)
    typer.echo(f"results: {Path(cfg.out) / 'results.json'}; report: datatrace report {Path(cfg.out) / 'run'}")


@app.command("report")
def report_command(
    scores_dir: Path = typer.Argument(..., help="A saved attribution run (run.json, data/, scores/<method>/)."),
    out: Path = typer.Option(None, help="HTML file to write (default SCORES_DIR/report.html)."),
    max_queries: int = typer.Option(None, min=1, help="Cards for the first N queries only."),
) -> None:
    """Render a saved attribution run as a self-contained HTML page (inputs, proponents, opponents, histograms)."""
    from .apps.qualitative import write_report

    path = _run_or_exit(write_report, scores_dir, out, max_queries=max_queries)
    typer.echo(f"report: {path}")


def _run_or_exit(fn, *args, **kwargs):
    """Call ``fn``; a :class:`DatatraceError` becomes a one-line message and exit status 2."""
    from .errors import DatatraceError

    try:
        return fn(*args, **kwargs)
    except DatatraceError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(2) from e


def _ci(interval) -> str:
    return "—" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _print_table(title: str, header: list[str], rows: list[list[str]], quiet: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(quiet=quiet)
    if not console.is_terminal:
        console.width = 120
    table = Table(title=title)
    for col in header:
        table.add_column(col, justify="left" if col in ("method", "selection") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    app()
