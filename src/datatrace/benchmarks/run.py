"""``datatrace bench``: run attribution methods on a built-in benchmark and compare them against its ground truth.

Every method attributes the same trained model(s) (built once by a :class:`~datatrace.benchmarks.methods.MethodContext`)
and is scored against the same cached ground truth. Reported per method: LDS with its bootstrap 95% interval over
queries, fit time (training features, kernels), score time (query features and the full score matrix), peak memory
(growth of the process's resident memory during fit + score, sampled every few milliseconds), storage (bytes of the
method's on-disk feature stores) and the time to train any extra models it needs (e.g. TRAK's ensemble). The noise
ceiling of the ground truth bounds every LDS.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..apps import report
from ..attributors.base import EXECUTION_PARAMS
from ..errors import check_choice
from ..eval import lds, noise_ceiling
from ..task import ClassificationTask
from . import get
from .base import Benchmark
from .methods import MethodContext, parse_methods


@dataclass
class MethodResult:
    """One method's row of a benchmark run (times in seconds, sizes in bytes)."""

    name: str
    description: str
    lds: float
    ci: tuple[float, float]
    n_undefined: int
    fit_s: float
    score_s: float
    models_s: float
    peak_mem_bytes: int
    storage_bytes: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    """A benchmark run: settings, ground truth summary and one :class:`MethodResult` per method."""

    benchmark: str
    version: int
    description: str
    settings: dict[str, Any]
    noise_ceiling: dict[str, Any]
    methods: list[MethodResult]
    environment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return report.plain(dataclasses.asdict(self))

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def run_bench(
    benchmark: str | Benchmark,
    methods: str | list[str],
    workers: int = 2,
    n_subsets: int | None = None,
    measurement: str = "loss",
    correlation: str = "spearman",
    backend: str = "local",
    ground_truth: str | os.PathLike | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> BenchResult:
    """Run ``methods`` (names from :mod:`~datatrace.benchmarks.methods`) on ``benchmark``.

    Args:
        benchmark: a built-in benchmark name or a :class:`Benchmark`.
        methods: ``"a,b,c"`` or a list of method names.
        workers, backend: retraining for the ground truth, computed on first use and cached.
        n_subsets: override the benchmark's number of subsets (a quick, noisier look).
        measurement: ``"loss"`` or ``"margin"`` (classification): what is attributed and retrained for.
        correlation: ``"spearman"`` or ``"kendall"`` LDS.
        ground_truth: a ground-truth store directory to use instead of the cache (refused if it was written for
            another benchmark, version or setting).
        seed: seed of the trained models and of the ground truth.
    """
    bench = get(benchmark) if isinstance(benchmark, str) else benchmark
    check_choice("correlation", correlation, ("spearman", "kendall"))
    if measurement != "loss":
        bench = dataclasses.replace(bench, task=ClassificationTask(measurement=measurement))
    chosen = parse_methods(methods)
    for method in chosen:
        method.check_available(bench)
    train, query = bench.data()
    gt = bench.ground_truth(workers, n_subsets, seed, verbose=verbose, backend=backend, path=ground_truth)
    ceiling = noise_ceiling(gt, correlation) if gt.seeds_per_subset > 1 else None
    ctx = MethodContext(bench, train, seed)
    ctx.model  # noqa: B018 — the shared model is trained before any method is timed
    rows = []
    with tempfile.TemporaryDirectory(prefix="datatrace-bench-") as tmp:
        for method in chosen:
            cache_dir = Path(tmp) / method.name
            t0 = time.perf_counter()
            attributor = method.build(ctx, cache_dir=cache_dir, verbose=verbose)
            t1 = time.perf_counter()
            with PeakMemory() as memory:
                attributor.fit(train)
                t2 = time.perf_counter()
                scores = attributor.score(query)
                values = scores.values
                t3 = time.perf_counter()
            result = lds(values, gt, correlation=correlation, seed=seed)
            hyper = scores.metadata.get("hyperparameters", {})
            rows.append(
                MethodResult(
                    name=method.name,
                    description=method.description,
                    lds=result.mean,
                    ci=result.ci,
                    n_undefined=result.n_undefined,
                    fit_s=t2 - t1,
                    score_s=t3 - t2,
                    models_s=t1 - t0,
                    peak_mem_bytes=memory.peak_bytes,
                    storage_bytes=directory_bytes(cache_dir),
                    hyperparameters={k: v for k, v in hyper.items() if k not in EXECUTION_PARAMS},
                )
            )
    return BenchResult(
        benchmark=bench.name,
        version=bench.version,
        description=bench.description,
        settings={
            "n_train": len(train),
            "n_query": len(query),
            "n_subsets": len(gt.masks),
            "fraction": bench.fraction,
            "seeds_per_subset": gt.seeds_per_subset,
            "common_random_numbers": bench.common_random_numbers,
            "measurement": measurement,
            "correlation": correlation,
            "seed": seed,
        },
        noise_ceiling={
            "mean": ceiling.mean if ceiling else None,
            "ci": ceiling.ci if ceiling else None,
            "seed_to_seed": ceiling.seed_to_seed if ceiling else None,
        },
        methods=rows,
        environment={
            "datatrace": __version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
    )


class PeakMemory:
    """Context manager measuring the peak growth of resident memory (RSS) over its entry value, in bytes.

    Samples ``/proc/self/statm`` from a background thread (Linux); elsewhere ``peak_bytes`` stays 0.
    """

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return 0

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, self.rss() - self._start)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakMemory:
        self._start = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss() - self._start)


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


# -- presentation ---------------------------------------------------------------------------------------------------


def _interval(ci) -> str:
    return "—" if ci is None or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def table_rows(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the results table (shared by the terminal and HTML tables)."""
    ceiling = result.noise_ceiling["mean"]
    header = ["method", "LDS", "95% CI", "ceiling", "fit s", "score s", "peak mem", "storage"]
    rows = [
        [
            m.name,
            f"{m.lds:.3f}",
            _interval(m.ci),
            "—" if ceiling is None else f"{ceiling:.3f}",
            f"{m.fit_s:.2f}",
            f"{m.score_s:.2f}",
            _size(m.peak_mem_bytes),
            _size(m.storage_bytes),
        ]
        for m in result.methods
    ]
    return header, rows


def caption(result: BenchResult) -> str:
    """One line saying what the table's numbers are."""
    s, ceiling = result.settings, result.noise_ceiling
    text = (
        f"{s['correlation'].capitalize()} LDS of the {s['measurement']} over {s['n_query']} queries, 95% bootstrap "
        f"CI; ground truth {s['n_subsets']} random {s['fraction']:.0%} subsets × {s['seeds_per_subset']} seeds"
        f"{' (common random numbers)' if s['common_random_numbers'] else ''}."
    )
    if ceiling["mean"] is not None:
        text += (
            f" Noise ceiling {ceiling['mean']:.3f} {_interval(ceiling['ci'])}; two single seeds agree at "
            f"{ceiling['seed_to_seed']:.3f}."
        )
    return text


def print_table(result: BenchResult, console=None) -> None:
    """Print the results as a rich table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"{result.benchmark} v{result.version}: {result.description}",
        caption=caption(result),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    header, rows = table_rows(result)
    for col in header:
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "95% CI")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def report_html(result: BenchResult) -> str:
    """Self-contained HTML report: settings, results table, LDS bars with CI whiskers, LDS against time."""
    names = [m.name for m in result.methods]
    ceiling = result.noise_ceiling["mean"]
    reference = None if ceiling is None else (ceiling, f"noise ceiling {ceiling:.3f}")
    bars = report.bar_chart_svg(
        names, [m.lds for m in result.methods], [m.ci for m in result.methods], "LDS per method", reference=reference
    )
    scatter = report.scatter_svg(
        [m.fit_s + m.score_s for m in result.methods],
        [m.lds for m in result.methods],
        names,
        x_label="fit + score time (s, log scale)",
        y_label="LDS",
        title="LDS against time",
        reference=reference,
    )
    header, rows = table_rows(result)
    body = [
        f'<p class="note">{html.escape(result.description)}. {html.escape(caption(result))} The noise ceiling is '
        "the LDS that the expected retraining outcome itself would reach: no method can be expected above it.</p>",
        report.table(header, rows),
        '<div class="row">',
        bars,
        scatter,
        "</div>",
        "<h2>Methods</h2>",
        report.table(
            ["method", "description", "hyperparameters"],
            [[m.name, m.description, json.dumps(report.plain(m.hyperparameters))] for m in result.methods],
            align="left",
        ),
        f'<p class="note">datatrace {result.environment["datatrace"]}, torch {result.environment["torch"]}, '
        f"{result.environment['threads']} threads, {result.environment['platform']}.</p>",
    ]
    return report.page(f"datatrace bench — {result.benchmark} v{result.version}", "".join(body))


def markdown_table(results: list[BenchResult]) -> str:
    """One Markdown table of several benchmark runs."""
    lines = [
        "| benchmark | method | LDS [95% CI] | noise ceiling | fit s | score s | peak memory | storage |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for name, value, ci, *rest in table_rows(result)[1]:
            lines.append(f"| {result.benchmark} | {name} | {value} {ci} | " + " | ".join(rest) + " |")
    return "\n".join(lines)
