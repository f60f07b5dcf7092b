"""Scoring the test predictions, and the results as JSON, a Markdown table and PNG plots.

Changes are in "points": accuracy and F1 in percent, so -0.5 is half a percentage point; Pearson and
Spearman x 100 (GLUE's convention), RMSE as it is (score units, -4..4 scale).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.eval.metrics import LOWER_IS_BETTER, METRICS, bootstrap_indices, paired_bootstrap
from benchmarks.eval.recipe import Recipe
from benchmarks.eval.tasks import Examples, Task

TABLE_BEGIN = "<!-- BEGIN eval table (written by `make eval`; edit benchmarks/eval/report.py instead) -->"
TABLE_END = "<!-- END eval table -->"
TITLES = {"accuracy": "accuracy", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman", "rmse": "RMSE"}


def scale(metric: str) -> float:
    """Factor to points: 100 for accuracy, F1 and correlations; 1 for RMSE."""
    return 1.0 if metric == "rmse" else 100.0


def score(
    task: Task,
    data: Examples,
    reference: np.ndarray,
    candidate: np.ndarray,
    recipe: Recipe,
    indices: np.ndarray,
) -> dict[str, Any]:
    """Metrics of `candidate` predictions and their change vs `reference` (float on the same runtime)."""
    from benchmarks.eval.steps import predictions

    ref, cand = predictions(task, reference), predictions(task, candidate)
    record: dict[str, Any] = {m: float(METRICS[m](data.targets, cand)) for m in task.metrics}
    record["change_vs_float"] = {
        m: paired_bootstrap(m, data.targets, ref, cand, indices, recipe.confidence).to_dict()
        for m in task.metrics
    }
    if task.regression:
        record["rms_change_vs_float"] = float(np.sqrt(np.mean((candidate - reference) ** 2)))
    else:
        record["agreement_with_float"] = float(np.mean(ref == cand))
    return record


def task_indices(data: Examples, recipe: Recipe) -> np.ndarray:
    return bootstrap_indices(len(data), recipe.bootstrap_resamples, recipe.bootstrap_seed)


# --- Markdown ------------------------------------------------------------------------------------------


def _points(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale(metric):.2f}" if metric == "rmse" else f"{value * scale(metric):.1f}"


def _delta(change: dict[str, Any] | None, metric: str) -> str:
    if not change:
        return "–"
    k = scale(metric)
    digits = 3 if metric == "rmse" else 1
    value, low, high = (change[x] * k for x in ("delta", "ci_low", "ci_high"))
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


#: the table's "graph run" label of each derived CPU graph (trt_runtime.backends.onnxruntime.graphs.CPU_GRAPHS)
DERIVED_GRAPH_LABELS = {"cpu-int8": "CPU INT8", "cpu-integer": "CPU integer", "cpu-float": "fused float"}


def graph_ran(row: dict[str, Any]) -> str:
    """Which graph the pipeline ran for this row, as the runner's choice named it (`graph_kind`): a derived CPU
    graph's label ("CPU INT8" for a qdq export, "CPU integer" for an integer export where the u8 x s8 GEMMs
    are exact, "fused float") or "exported"."""
    runtime = (row.get("onnxruntime") or {}).get("runtime") or {}
    kind = runtime.get("graph_kind")
    if kind is None:  # a record from before the runtime recorded it
        return "(not recorded)"
    return DERIVED_GRAPH_LABELS.get(str(kind), str(kind))


def markdown_table(task_name: str, task_result: dict[str, Any]) -> str:
    """One row per model: every task metric and its change vs float on the pipeline's default graph, then
    the headline change on the exported Q/DQ graph and in PyTorch where those were run."""
    metrics: list[str] = task_result["metrics"]
    headline = metrics[0]
    rows = task_result["rows"]
    extra = [
        (column, title)
        for column, title in (("onnxruntime_exported", "exported Q/DQ graph"), ("pytorch", "PyTorch"))
        if any(column in row for row in rows)
    ]
    header = "| model | graph run |" + "".join(f" {TITLES[m]} | Δ vs float [95% CI] |" for m in metrics)
    header += "".join(f" Δ {TITLES[headline]}, {title} [95% CI] |" for _, title in extra)
    lines = [header, "| --- | --- |" + " ---: | ---: |" * len(metrics) + " ---: |" * len(extra)]
    for row in rows:
        ort = row.get("onnxruntime") or {}
        is_float = row["group"] == "float"
        cells = [row["title"], graph_ran(row)]
        for metric in metrics:
            cells.append(_points(ort.get(metric), metric))
            cells.append(
                "(reference)" if is_float else _delta(ort.get("change_vs_float", {}).get(metric), metric)
            )
        for column, _ in extra:
            record = row.get(column)
            if (
                is_float
            ):  # the exported graph's reference is float's ONNX Runtime run (float has no Q/DQ graph)
                cells.append("(reference)")
            elif record is None:
                cells.append("–")
            else:
                cells.append(_delta(record["change_vs_float"].get(headline), headline))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sensitivity_table(task_result: dict[str, Any]) -> str | None:
    analysis = task_result.get("dev_analysis") or {}
    sensitivity = analysis.get("sensitivity")
    if not sensitivity:
        return None
    headline = task_result["metrics"][0]
    regression = headline != "accuracy"
    columns = ["rms_change"] if regression else ["flip_rate", "rms_change"]
    names = {"flip_rate": "flipped", "rms_change": "RMS change"}
    header = (
        "| layer | "
        + " | ".join(
            f"{sites}: Δ {TITLES[headline]} [95% CI] | " + " | ".join(f"{sites}: {names[c]}" for c in columns)
            for sites in ("default sites", "every site")
        )
        + " |"
    )
    lines = [header, "| --- |" + " ---: |" * (2 * (1 + len(columns)))]
    for row in sensitivity["layers"]:
        cells = [row["layer"]]
        for sites in ("default sites", "every site"):
            record = row.get(sites)
            if record is None:
                cells += ["–"] * (1 + len(columns))
                continue
            cells.append(_delta(record["change"], headline))
            for column in columns:
                value = record[column]
                cells.append(f"{value * 100:.1f} %" if column == "flip_rate" else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The generated block of docs/eval.md: the tables and what they were measured on."""
    recipe = results["recipe"]
    parts = [
        TABLE_BEGIN,
        "",
        f"Measured {results['created']} on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
        f"this run's wall time {results['wall_seconds'] / 60:.1f} min"
        + (f" ({len(results['reused'])} exports reused from the cache)" if results.get("reused") else "")
        + f"; every stage made from scratch (a cold run) sums to {results['stage_seconds_total'] / 60:.1f} min"
        + f"; {recipe['bootstrap_resamples']} paired bootstrap resamples of the test sentences (seed "
        f'{recipe["bootstrap_seed"]}). Metric columns: `trt_runtime.pipeline(..., backend="onnxruntime")` with '
        'its defaults ("graph run": a qdq export runs on the CPU as the derived CPU INT8 graph, an integer export as the CPU integer graph where the CPU has VNNI or AMX); "exported Q/DQ '
        'graph": model.onnx as exported (what TensorRT is given), run with `graph="exported"`'
        + (
            "; PyTorch: the same exported model (checkpoint + the export's calibration.json) in PyTorch"
            if results["options"].get("pytorch")
            else ""
        )
        + ". Δ in points (accuracy, F1, correlations x 100); RMSE in score units.",
    ]
    for task_name, task_result in results["tasks"].items():
        test = task_result["test"]
        parts += [
            "",
            f"#### {task_name}: {test['num_examples']} test sentences"
            + (f" ({test['dropped_neutral']} neutral ones dropped)" if test.get("dropped_neutral") else ""),
            "",
            markdown_table(task_name, task_result),
        ]
        notes = task_result.get("notes") or []
        if notes:
            parts += [""] + [f"- {note}" for note in notes]
        layers = sensitivity_table(task_result)
        if layers:
            analysis = task_result["dev_analysis"]
            parts += [
                "",
                f"Per-layer sensitivity ({task_name}, {analysis['num_examples']} dev sentences, PyTorch fake "
                f"quantization, {analysis['sensitivity']['calibrator']}): one encoder layer quantized, the rest "
                "float; Δ vs float, share of predictions flipped and RMS change of the output (logit margin).",
                "",
                layers,
            ]
    parts += ["", TABLE_END]
    return "\n".join(parts)


def update_doc(doc: Path, block: str) -> str:
    """docs/eval.md with the generated block replaced (or appended when the markers are missing)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Accuracy evaluation\n"
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start != -1 and end != -1 and end > start:
        return text[:start] + block + text[end + len(TABLE_END) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


# --- plots ---------------------------------------------------------------------------------------------


def plot_deltas(results: dict[str, Any]) -> bytes:
    """PNG: per task, the headline metric's change vs float with its 95% interval, per model and runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"].items())
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(6.5 * len(tasks), 0.42 * _max_rows(tasks) + 1.8), squeeze=False
    )
    for ax, (task_name, task_result) in zip(axes[0], tasks):
        metric = task_result["metrics"][0]
        rows = [row for row in task_result["rows"] if row["group"] != "float"]
        y = np.arange(len(rows))[::-1]
        runtimes = [
            (runtime, style, label)
            for runtime, style, label in (
                ("onnxruntime", "o", "pipeline, CPU default graph"),
                ("onnxruntime_exported", "D", "exported Q/DQ graph"),
                ("pytorch", "s", "PyTorch (same model)"),
            )
            if any(runtime in row for row in rows)
        ]
        offsets = np.linspace(0.2, -0.2, len(runtimes)) if len(runtimes) > 1 else [0.0]
        for offset, (runtime, style, label) in zip(offsets, runtimes):
            values, lows, highs, ys = [], [], [], []
            for position, row in zip(y, rows):
                change = (row.get(runtime) or {}).get("change_vs_float", {}).get(metric)
                if change is None:
                    continue
                k = scale(metric)
                values.append(change["delta"] * k)
                lows.append((change["delta"] - change["ci_low"]) * k)
                highs.append((change["ci_high"] - change["delta"]) * k)
                ys.append(position + offset)
            ax.errorbar(
                values,
                ys,
                xerr=[lows, highs],
                fmt=style,
                capsize=3,
                label=label,
                mfc="white" if runtime != "onnxruntime" else None,
            )
        ax.axvline(0.0, color="black", linewidth=0.8)
        if metric == "accuracy":
            ax.axvline(-0.5, color="grey", linestyle="--", linewidth=0.8, label="-0.5 point")
        ax.set_yticks(y)
        ax.set_yticklabels([row["title"] for row in rows])
        ax.set_xlabel(
            f"Δ {TITLES[metric]} vs float ({'points' if metric != 'rmse' else 'score units'}), 95% CI"
        )
        ax.set_title(f"{task_name}: {task_result['test']['num_examples']} test sentences")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("all-MiniLM-L6-v2 sentiment (VADER), INT8 vs float")
    fig.tight_layout()
    return _png(fig)


def plot_sensitivity(results: dict[str, Any]) -> bytes | None:
    """PNG: per task, the RMS output change (and flips) when one layer at a time is quantized."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [(n, r) for n, r in results["tasks"].items() if (r.get("dev_analysis") or {}).get("sensitivity")]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.6), squeeze=False)
    for ax, (task_name, task_result) in zip(axes[0], tasks):
        layers = task_result["dev_analysis"]["sensitivity"]["layers"]
        x = np.arange(len(layers))
        for offset, sites in ((-0.2, "default sites"), (0.2, "every site")):
            values = [(row.get(sites) or {}).get("rms_change", 0.0) for row in layers]
            ax.bar(x + offset, values, width=0.4, label=sites)
        ax.set_xticks(x)
        ax.set_xticklabels([row["layer"].replace("layer ", "L") for row in layers])
        ax.set_ylabel("RMS change of the output vs float")
        ax.set_title(
            f"{task_name}: one layer INT8 ({task_result['dev_analysis']['sensitivity']['calibrator']})"
        )
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _max_rows(tasks: list[tuple[str, dict[str, Any]]]) -> int:
    return max((len(result["rows"]) for _, result in tasks), default=1)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER
