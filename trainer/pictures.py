"""Pictures people look at after clustering, written as PNG files.

Five pictures, each written atomically (rendered in memory, saved beside its final name, then
renamed into place) into a folder that is created when missing; each function returns the path:

- `prototype_grid`: one row of images per cluster (e.g. the samples nearest its centre);
- `cluster_sizes`: a bar chart of images per cluster against the uniform share;
- `confusion_matrix_plot`: clusters against true classes, rows ordered so a good clustering is
  a diagonal (`order_rows_by_class`);
- `training_curves`: metrics from `metrics.jsonl` records against the epoch;
- `k_selection_plot`: the K search's scores against the number of clusters, the choice marked.

Drawing uses `matplotlib.figure.Figure` with the Agg canvas directly, never pyplot, so
importing or calling this module leaves matplotlib's global backend alone and works without
a display.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from trainer.atomic import atomic_write_bytes

__all__ = [
    "MAX_PNG_BYTES",
    "cluster_sizes",
    "confusion_matrix_plot",
    "k_selection_plot",
    "order_rows_by_class",
    "prototype_grid",
    "training_curves",
]

MAX_PNG_BYTES = 2_800_000  # prototype grids are re-rendered at a lower resolution above this

# Prototype grid geometry (inches / pixels).
_CELL_INCHES = 0.9  # preferred size of one image cell
_MAX_GRID_HEIGHT_INCHES = 60.0  # 100 clusters -> 0.6 inch rows
_MAX_GRID_WIDTH_INCHES = 16.0
_TARGET_CELL_PIXELS = 84  # small images are enlarged by a whole factor up to about this
_MAX_PIXELS = 6_000_000  # figure area in pixels before the PNG is even tried
_MIN_DPI = 30.0

# Confusion matrices up to this size get the raw count written in every cell.
_ANNOTATE_MAX = 20


# --------------------------------------------------------------------------- saving


def _render(fig: Figure, dpi: float) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15, facecolor="white")
    return buffer.getvalue()


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike, dpi: float = 100.0) -> Path:
    path = Path(path)
    atomic_write_bytes(path, _render(fig, dpi))
    return path


# --------------------------------------------------------------------------- prototype grid


def _as_hwc(image: Any, index: int) -> np.ndarray:
    """One image `(C, H, W)` (tensor or array; `(H, W)` is taken as gray) -> `(H, W, C)` uint8."""
    if hasattr(image, "detach"):  # torch.Tensor, without importing torch here
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"image {index} must be (C, H, W) with C = 1 or 3, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _fetch_images(images: Any, prototype_ids: Sequence[Sequence[int]]) -> dict[int, np.ndarray]:
    """`{id: (H, W, C) uint8}`, reading each requested id once and nothing else."""
    try:
        count: Optional[int] = len(images)
    except TypeError:
        count = None
    fetched: dict[int, np.ndarray] = {}
    for row in prototype_ids:
        for raw in row:
            if raw is None:
                continue
            index = int(raw)
            if index in fetched:
                continue
            if index < 0 or (count is not None and index >= count):
                size = "" if count is None else f" of {count}"
                raise IndexError(f"prototype id {index} is outside the image set{size}")
            fetched[index] = _as_hwc(images[index], index)
    if fetched:
        sizes = {a.shape[:2] for a in fetched.values()}
        if len(sizes) > 1:
            raise ValueError(f"prototype images differ in size: {sorted(sizes)}")
        if len({a.shape[2] for a in fetched.values()}) > 1:  # mixed gray and colour: show all as colour
            fetched = {k: (np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a) for k, a in fetched.items()}
    return fetched


def _row_label(k: int, names: Optional[Sequence[str]], sizes: Optional[Sequence[int]]) -> str:
    label = f"cluster {k}"
    if names is not None and str(names[k]):
        label += f": {names[k]}"
    if sizes is not None:
        label += f" (n={int(sizes[k])})"
    return label


def prototype_grid(
    images: Any,
    prototype_ids: list[list[int]],
    path: str | os.PathLike,
    cluster_names: Optional[list[str]] = None,
    cluster_sizes: Optional[list[int]] = None,
    title: Optional[str] = None,
    *,
    max_bytes: int = MAX_PNG_BYTES,
    row_labels: Optional[list[str]] = None,
) -> Path:
    """One row per cluster showing the images `prototype_ids[k]`, labelled on the left.

    `images` is an `(N, C, H, W)` uint8 array/tensor (C = 1 or 3) or anything where
    `images[i]` gives one `(C, H, W)` uint8 image (a lazy data set); only the requested ids are
    read, each once. Rows have as many cells as the longest id list; shorter rows end in blank
    cells and clusters without ids say "(empty)". Large grids are drawn with smaller cells and
    a resolution that keeps the PNG under `max_bytes`. A `None` id leaves its cell blank (a gap
    within a row); `row_labels` replaces the "cluster k" labels when the rows are not clusters.
    """
    num_rows = len(prototype_ids)
    if num_rows == 0:
        raise ValueError("prototype_grid needs at least one cluster")
    for what, values in (("cluster_names", cluster_names), ("cluster_sizes", cluster_sizes),
                         ("row_labels", row_labels)):
        if values is not None and len(values) != num_rows:
            raise ValueError(f"{len(values)} {what} for {num_rows} clusters")

    fetched = _fetch_images(images, prototype_ids)
    num_cols = max(1, max(len(row) for row in prototype_ids))
    if fetched:
        height, width, channels = next(iter(fetched.values())).shape
    else:  # every cluster is empty: draw the labels and "(empty)" only
        height = width = 28
        channels = 1
    pad = max(1, round(0.06 * max(height, width)))
    step_y, step_x = height + pad, width + pad

    # One mosaic image: exact alignment and a single draw call even for 100 x 10 cells.
    mosaic = np.full((pad + num_rows * step_y, pad + num_cols * step_x, channels), 255, dtype=np.uint8)
    for r, row in enumerate(prototype_ids):
        for c, raw in enumerate(row):
            if raw is None:
                continue
            y, x = pad + r * step_y, pad + c * step_x
            mosaic[y : y + height, x : x + width] = fetched[int(raw)]

    cell_in = min(_CELL_INCHES, _MAX_GRID_HEIGHT_INCHES / num_rows, _MAX_GRID_WIDTH_INCHES / num_cols)
    inch_per_px = cell_in / max(step_y, step_x)
    grid_w, grid_h = mosaic.shape[1] * inch_per_px, mosaic.shape[0] * inch_per_px
    labels = row_labels or [_row_label(k, cluster_names, cluster_sizes) for k in range(num_rows)]
    fontsize = float(np.clip(cell_in * 72 * 0.22, 6.0, 9.0))
    label_w = 0.25 + 0.62 * fontsize / 72 * max(len(s) for s in labels)  # rough text width
    title_h = 0.5 if title is not None else 0.1
    fig_w, fig_h = grid_w + label_w + 0.1, grid_h + title_h + 0.1
    fig = _new_figure(fig_w, fig_h)
    ax = fig.add_axes((label_w / fig_w, 0.1 / fig_h, grid_w / fig_w, grid_h / fig_h))

    # Scale so each image pixel becomes a whole number of screen pixels where possible.
    scale = max(1, round(_TARGET_CELL_PIXELS / max(height, width)))
    dpi = scale / inch_per_px
    dpi = min(dpi, math.sqrt(_MAX_PIXELS / (fig_w * fig_h)))
    dpi = max(dpi, _MIN_DPI)
    upscaling = dpi * inch_per_px >= 1.0
    interpolation = "nearest" if upscaling else "antialiased"
    if channels == 1:
        ax.imshow(mosaic[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation=interpolation)
    else:
        ax.imshow(mosaic, interpolation=interpolation)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([pad + r * step_y + (height - 1) / 2 for r in range(num_rows)], labels, fontsize=fontsize)
    ax.tick_params(axis="y", length=0, pad=4)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for r, row in enumerate(prototype_ids):
        if len(row) == 0:
            ax.text(
                pad + 0.08 * width, pad + r * step_y + (height - 1) / 2, "(empty)",
                ha="left", va="center", fontsize=fontsize, color="0.45", style="italic",
            )  # fmt: skip
    if title is not None:
        ax.set_title(title, fontsize=max(fontsize + 2, 10), loc="left")

    data = _render(fig, dpi)
    for _ in range(4):  # detailed colour images can still make a big file: lower the resolution
        if len(data) <= max_bytes or dpi <= _MIN_DPI:
            break
        dpi = max(_MIN_DPI, dpi * math.sqrt(max_bytes / len(data)) * 0.9)
        data = _render(fig, dpi)
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


# --------------------------------------------------------------------------- cluster sizes


def cluster_sizes(
    sizes: list[int] | np.ndarray,
    path: str | os.PathLike,
    title: Optional[str] = None,
    reference: Optional[np.ndarray] = None,
) -> Path:
    """Bar chart of images per cluster with the uniform share `N / k` as a dashed line.

    `reference` (sizes of another clustering, e.g. the previous model's) is drawn as hollow
    bars over the filled ones. Empty clusters are marked with a red cross on the axis.
    """
    counts = np.asarray(sizes, dtype=np.float64).ravel()
    k = counts.size
    if k == 0:
        raise ValueError("cluster_sizes needs at least one cluster")
    ref = None
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64).ravel()
        if ref.size != k:
            raise ValueError(f"reference has {ref.size} clusters, sizes have {k}")
    total = counts.sum()
    x = np.arange(k)

    fig = _new_figure(min(18.0, max(6.0, 0.32 * k + 1.5)), 4.0)
    ax = fig.add_subplot()
    ax.bar(x, counts, width=0.8, color="tab:blue", label="images per cluster", zorder=2)
    if ref is not None:
        ax.bar(
            x, ref, width=0.8, fill=False, edgecolor="black", linewidth=1.0 if k <= 60 else 0.5,
            label="reference", zorder=3,
        )  # fmt: skip
    ax.axhline(total / k, color="tab:red", linestyle="--", linewidth=1.2, label=f"uniform share ({total / k:.1f})", zorder=4)
    empty = x[counts == 0]
    if empty.size:
        ax.plot(empty, np.zeros(empty.size), "x", color="tab:red", markersize=7, clip_on=False, label=f"empty ({empty.size})", zorder=5)
    ax.set_xlabel("cluster")
    ax.set_ylabel("images")
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(bottom=0)
    if k <= 40:
        ax.set_xticks(x)
        ax.tick_params(axis="x", labelsize=8 if k > 20 else 9)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True))
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # never over the bars
    if title is None:
        title = f"Images per cluster (N={int(total)}, k={k}, smallest {int(counts.min())}, largest {int(counts.max())})"
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- confusion matrix


def order_rows_by_class(counts: np.ndarray) -> np.ndarray:
    """Row (cluster) indices ordered by the class each cluster maps to.

    The mapping is `trainer.evaluate.cluster_to_class` (Hungarian when clusters <= classes,
    majority otherwise); clusters of one class are ordered largest-first at that class, and
    clusters without a class (none with the current mapping) go last. With as many clusters
    as classes a good clustering becomes a diagonal.
    """
    from trainer.evaluate import cluster_to_class  # scipy/sklearn: only when this is drawn

    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be (num_clusters, num_classes), got shape {counts.shape}")
    if counts.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    mapping = np.asarray(cluster_to_class(counts), dtype=np.int64)
    rows = np.arange(counts.shape[0])
    mapped = mapping >= 0
    hits = np.where(mapped, counts[rows, np.where(mapped, mapping, 0)], 0)
    sort_class = np.where(mapped, mapping, counts.shape[1])
    return np.lexsort((rows, -hits, sort_class)).astype(np.int64)  # last key sorts first


def confusion_matrix_plot(
    counts: np.ndarray,
    path: str | os.PathLike,
    class_names: Optional[list[str]] = None,
    title: Optional[str] = None,
) -> Path:
    """Clusters (rows, labelled `c{k}`) against true classes (columns), rows reordered by
    `order_rows_by_class`. Colours are the fraction of each cluster in each class; the raw
    counts are written in the cells when the matrix is at most 20 x 20.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or 0 in counts.shape:
        raise ValueError(f"counts must be a non-empty (num_clusters, num_classes) matrix, got shape {counts.shape}")
    num_clusters, num_classes = counts.shape
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    order = order_rows_by_class(counts)
    shown = counts[order].astype(np.float64)
    row_sums = shown.sum(axis=1, keepdims=True)
    fractions = np.divide(shown, row_sums, out=np.zeros_like(shown), where=row_sums > 0)

    annotate = num_clusters <= _ANNOTATE_MAX and num_classes <= _ANNOTATE_MAX
    cell_w = 0.6 if annotate else min(0.4, 14.0 / num_classes)
    cell_h = 0.45 if annotate else min(0.3, 18.0 / num_clusters)
    fig_w, fig_h = max(4.5, num_classes * cell_w + 2.5), max(3.0, num_clusters * cell_h + 1.8)
    fig = _new_figure(fig_w, fig_h)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, aspect=max(20.0, 24.0 * fig_h / fig_w))
    colorbar.set_label("fraction of the cluster's images")

    labels = class_names if class_names is not None else [str(j) for j in range(num_classes)]
    tick_font = 9 if num_classes <= 20 else 7
    ax.set_xticks(np.arange(num_classes), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_font)
    y_every = max(1, math.ceil(num_clusters / 60))  # keep y labels legible for many clusters
    y_ticks = np.arange(0, num_clusters, y_every)
    ax.set_yticks(y_ticks, [f"c{order[i]}" for i in y_ticks], fontsize=9 if num_clusters <= 30 else 6)
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster")
    ax.tick_params(length=2)
    if annotate:
        size = 8 if max(num_clusters, num_classes) <= 12 else 6
        for i in range(num_clusters):
            for j in range(num_classes):
                value = counts[order[i], j]
                text = f"{int(value)}" if float(value).is_integer() else f"{float(value):.2g}"
                color = "white" if fractions[i, j] > 0.55 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color)
    if title is None:
        total = counts.sum()
        from trainer.evaluate import cluster_to_class

        mapping = cluster_to_class(counts)
        mapped = mapping >= 0
        hits = counts[np.arange(num_clusters)[mapped], mapping[mapped]].sum()
        accuracy = f", accuracy {hits / total:.3f}" if total > 0 else ""
        title = f"Clusters vs true classes ({num_clusters} x {num_classes}{accuracy})"
    ax.set_title(title, fontsize=10)
    return _save(fig, path, dpi=110)


# --------------------------------------------------------------------------- training curves


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def training_curves(
    records: list[dict],
    path: str | os.PathLike,
    keys: list[str],
    title: Optional[str] = None,
) -> Path:
    """One subplot per metric in `keys`, plotted against `epoch`.

    Records lacking the key or an epoch (or with a non-numeric value) are skipped. Records
    carrying a `stage` (as `metrics.jsonl` does) get one line per stage; when an epoch was
    logged twice (re-run after a resume) the later record wins.
    """
    if not keys:
        raise ValueError("training_curves needs at least one metric key")
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = _new_figure(4.3 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    staged = any("stage" in r for r in records)
    for n, key in enumerate(keys):
        ax = axes[n // ncols][n % ncols]
        series: dict[str, dict[float, float]] = {}
        for record in records:
            epoch, value = _number(record.get("epoch")), _number(record.get(key))
            if epoch is None or value is None:
                continue
            series.setdefault(str(record.get("stage", "")), {})[epoch] = value
        for stage, points in series.items():
            xs = sorted(points)
            ys = [points[x] for x in xs]
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.4, label=stage or None)
        if not series:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
        elif staged and len(series) > 1:
            ax.legend(fontsize=8)
        elif staged:
            key = f"{key} ({next(iter(series))})" if next(iter(series)) else key
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for n in range(len(keys), nrows * ncols):
        axes[n // ncols][n % ncols].set_visible(False)
    if title is not None:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- K selection


def k_selection_plot(
    k_values: Sequence[int],
    series: dict[str, Sequence[float]],
    chosen: int,
    path: str | os.PathLike,
    title: Optional[str] = None,
    evaluation: Optional[Sequence[float]] = None,
    errors: Optional[Sequence[float]] = None,
    floor: Optional[float] = None,
) -> Path:
    """Scores of every candidate number of clusters against K, the chosen K marked.

    `series` maps a score's name to one value per K (the first is the one the choice rests on,
    drawn thickest, with a band of +- `errors` when given, and a dashed grey line at `floor`, the
    value below which it means "no structure"); `evaluation` (e.g. ACC where labels exist) is
    drawn dotted and labelled as evaluation only.
    """
    ks = np.asarray(k_values, dtype=np.int64)
    if ks.size == 0 or chosen not in set(ks.tolist()):
        raise ValueError(f"k_selection_plot needs candidates including the chosen K={chosen}, got {ks.tolist()}")
    for name, values in series.items():
        if len(values) != ks.size:
            raise ValueError(f"{name} has {len(values)} values for {ks.size} candidates")
    fig = _new_figure(min(14.0, max(6.5, 0.3 * ks.size + 3.0)), 4.0)
    ax = fig.add_subplot()
    for rank, (name, values) in enumerate(series.items()):
        line = ax.plot(ks, values, "o-", linewidth=2.2 if rank == 0 else 1.0, markersize=5 if rank == 0 else 3,
                       alpha=1.0 if rank == 0 else 0.6, label=name, zorder=3 if rank == 0 else 2)[0]
        if rank == 0 and errors is not None:
            low, high = np.asarray(values) - np.asarray(errors), np.asarray(values) + np.asarray(errors)
            ax.fill_between(ks, low, high, color=line.get_color(), alpha=0.2, linewidth=0, zorder=1)
        if rank == 0 and floor is not None:
            ax.axhline(floor, color="grey", linestyle="--", linewidth=0.8, label=f"{name.split(' (')[0]} "
                       f"below {floor:g}: weak structure", zorder=1)
    if evaluation is not None:
        ax.plot(ks, evaluation, ":", color="black", linewidth=1.2, label="ACC (labels; evaluation only)", zorder=2)
    ax.axvline(chosen, color="tab:red", linestyle="--", linewidth=1.2, label=f"chosen K = {chosen}", zorder=1)
    ax.set_xlabel("number of clusters K")
    ax.set_ylabel("score (higher is better)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(25, ks.size), integer=True))
    ax.grid(alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or f"Choosing K without labels: K = {chosen} of {ks.min()}..{ks.max()}", fontsize=10)
    return _save(fig, path)
