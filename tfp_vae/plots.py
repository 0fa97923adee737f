"""One function per figure: numpy arrays in, a PNG file out.

Every function takes plain arrays (no models, no TensorFlow) and a `path`, draws
with matplotlib's object-oriented API on an Agg canvas (so no display and no
pyplot global state are ever involved, and figures are safe to draw from any
thread), creates the parent directories, writes the PNG atomically (to a
temporary file in the same directory, then `os.replace`, so a reader never sees
a half-written figure), and returns the path as a string.

Images are [N, H, W, C] with values in [0, 1] (clipped for display) and C = 1
(drawn in grayscale), 3 (RGB) or 4 (RGBA).

Example:

    z = plots.manifold_latents(20)                    # [400, 2], the grid's order
    images = model.decode(z).mean().numpy()           # [400, 28, 28, 1]
    plots.latent_manifold(images, "figures/manifold.png")
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfp_vae import files

PathLike = str | os.PathLike

_DPI = 100
_INCHES_PER_PIXEL = 0.6 / 28  # an MNIST digit is drawn 0.6 inches wide
_MAX_WIDTH, _MAX_HEIGHT = 16.0, 12.0  # inches
_PAD = 2  # pixels of background between tiled images
_PAD_VALUE = 1.0  # white, between the dark backgrounds of digits
_MAX_CATEGORIES = 20  # integer labels with more distinct values get a colorbar
_MAX_TICKS = 11


# ------------------------------------------------------------------- latent grids


def manifold_grid_values(n: int) -> np.ndarray:
    """The n quantiles of N(0, 1) at probabilities (i + 0.5) / n, i = 0 … n − 1.

    Decoding a grid of these values shows the latent space as the prior weighs it
    (equal prior mass between neighbouring points).

    Returns:
      [n] float64, increasing and symmetric about 0.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    normal = statistics.NormalDist()
    return np.array([normal.inv_cdf((i + 0.5) / n) for i in range(n)])


def manifold_latents(n: int, grid_values: Any = None) -> np.ndarray:
    """The 2-D latent points of an n × n manifold, in `latent_manifold`'s order.

    Image i * n + j of the figure is drawn in row i (top to bottom) and column j
    (left to right), at z = (grid_values[j], grid_values[n − 1 − i]): z₁ grows to
    the right and z₂ grows upwards, as on a scatter plot.

    Args:
      n: points per axis.
      grid_values: [n] increasing values per axis; default
        `manifold_grid_values(n)`.

    Returns:
      [n * n, 2] float64.
    """
    values = _grid_values(n, grid_values)
    z1, z2 = np.meshgrid(values, values[::-1])  # each [n, n], row i is z₂ = values[n-1-i]
    return np.stack([z1.ravel(), z2.ravel()], axis=1)


# ------------------------------------------------------------------ image figures


def image_grid(
    images: Any, path: PathLike, ncols: int | None = None, title: str | None = None
) -> str:
    """A grid of images, row-major.

    Args:
      images: [N, H, W, C] in [0, 1].
      path: the PNG to write.
      ncols: images per row; default ceil(sqrt(N)).
      title: optional figure title.

    Returns:
      path, as a string.
    """
    images = _check_images(images, "images")
    if ncols is None:
        ncols = math.ceil(math.sqrt(len(images)))
    _check_positive_int(ncols, "ncols")
    fig, ax = _image_figure(_tile(images, ncols), title)
    ax.set_axis_off()
    return _save(fig, path)


def samples(images: Any, path: PathLike, title: str | None = "Samples from the prior") -> str:
    """Decoded samples z ~ p(z) as a square-ish grid.

    Args:
      images: [N, H, W, C] in [0, 1].
      path: the PNG to write.
      title: figure title.

    Returns:
      path, as a string.
    """
    return image_grid(images, path, title=title)


def interpolation(images: Any, path: PathLike, title: str | None = None) -> str:
    """Decodings along a path between two codes, in one row, left to right.

    Args:
      images: [n, H, W, C] in [0, 1], the path's n steps.
      path: the PNG to write.
      title: optional figure title.

    Returns:
      path, as a string.
    """
    images = _check_images(images, "images")
    return image_grid(images, path, ncols=len(images), title=title)


def reconstructions(
    originals: Any,
    recons: Any,
    path: PathLike,
    title: str | None = None,
    ncols: int | None = None,
) -> str:
    """Inputs above their reconstructions.

    With N ≤ 12 examples: one row of inputs over one row of reconstructions.
    With more, the examples wrap into pairs of rows, ncols per row.

    Args:
      originals: [N, H, W, C] in [0, 1].
      recons: [N, H, W, C] in [0, 1], recons[i] reconstructs originals[i].
      path: the PNG to write.
      title: optional figure title.
      ncols: examples per row; default N if N ≤ 12, else 10.

    Returns:
      path, as a string.
    """
    originals = _check_images(originals, "originals")
    recons = _check_images(recons, "recons")
    if originals.shape != recons.shape:
        raise ValueError(
            f"originals and recons must have the same shape, got {originals.shape} "
            f"and {recons.shape}"
        )
    n = len(originals)
    if ncols is None:
        ncols = n if n <= 12 else 10
    _check_positive_int(ncols, "ncols")
    ncols = min(ncols, n)
    pairs = math.ceil(n / ncols)
    blank = np.full((pairs * ncols - n, *originals.shape[1:]), _PAD_VALUE)
    originals = np.concatenate([originals, blank]).reshape(pairs, 1, ncols, *originals.shape[1:])
    recons = np.concatenate([recons, blank]).reshape(pairs, 1, ncols, *recons.shape[1:])
    interleaved = np.concatenate([originals, recons], axis=1)  # [pairs, 2, ncols, H, W, C]
    tiled = _tile(interleaved.reshape(-1, *interleaved.shape[3:]), ncols)
    fig, ax = _image_figure(tiled, title, label_width=1.0)
    height = originals.shape[3]
    _row_ticks(ax, height, ["input", "reconstruction"] * pairs)
    ax.set_xticks([])
    return _save(fig, path)


def latent_manifold(
    images: Any, path: PathLike, grid_values: Any = None, title: str | None = None
) -> str:
    """The decoded n × n latent grid as one seamless image, with z ticks on the axes.

    Args:
      images: [n * n, H, W, C] in [0, 1], in `manifold_latents(n)`'s order:
        image i * n + j decodes z = (grid_values[j], grid_values[n − 1 − i]).
      path: the PNG to write.
      grid_values: [n] the values along each axis; default
        `manifold_grid_values(n)` (the N(0, 1) quantiles).
      title: optional figure title.

    Returns:
      path, as a string.
    """
    images = _check_images(images, "images")
    n = math.isqrt(len(images))
    if n * n != len(images):
        raise ValueError(f"images must hold n * n images, got {len(images)}")
    values = _grid_values(n, grid_values)
    height, width = images.shape[1:3]
    fig, ax = _image_figure(_tile(images, n, pad=0), title, label_width=0.8)
    step = math.ceil(n / _MAX_TICKS)
    ticks = np.arange(0, n, step)  # every step-th row and column
    ax.set_xticks(ticks * width + (width - 1) / 2, [f"{values[j]:.2f}" for j in ticks])
    ax.set_yticks(
        ticks * height + (height - 1) / 2, [f"{values[n - 1 - i]:.2f}" for i in ticks]
    )
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")
    return _save(fig, path)


def rows_by_class(
    images: Any,
    n_per_row: int,
    path: PathLike,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """One row per class (e.g. a conditional VAE's samples for each digit).

    Args:
      images: [R * n_per_row, H, W, C] in [0, 1], row r holding images
        r * n_per_row … (r + 1) * n_per_row − 1.
      n_per_row: images per row.
      path: the PNG to write.
      row_labels: R labels drawn left of the rows, or None.
      title: optional figure title.

    Returns:
      path, as a string.
    """
    images = _check_images(images, "images")
    _check_positive_int(n_per_row, "n_per_row")
    if len(images) % n_per_row:
        raise ValueError(
            f"the number of images ({len(images)}) must be a multiple of "
            f"n_per_row ({n_per_row})"
        )
    rows = len(images) // n_per_row
    if row_labels is not None:
        row_labels = [str(label) for label in row_labels]
        if len(row_labels) != rows:
            raise ValueError(f"row_labels must have {rows} entries, got {len(row_labels)}")
    fig, ax = _image_figure(
        _tile(images, n_per_row), title, label_width=0.8 if row_labels else 0.0
    )
    if row_labels is None:
        ax.set_axis_off()
    else:
        _row_ticks(ax, images.shape[1], row_labels)
        ax.set_xticks([])
    return _save(fig, path)


def _panels(by_name, arg: str, what: str, check) -> dict:
    """{str(name): check(value, ...)} of a non-empty {panel name: array} argument."""
    if not isinstance(by_name, Mapping) or not by_name:
        raise ValueError(f"{arg} must be a non-empty dict of name -> {what}")
    return {str(name): check(value, f"{arg}[{name!r}]") for name, value in by_name.items()}


def side_by_side_grids(
    images_by_name: Mapping[str, Any],
    path: PathLike,
    ncols: int | None = None,
    title: str | None = None,
) -> str:
    """Several image grids side by side, one titled panel each (e.g. samples
    with z from the prior beside samples with z from a post-hoc mixture).

    Args:
      images_by_name: {panel title: images [N, H, W, C] in [0, 1]}, in order;
        every panel's images have the same H, W and C.
      path: the PNG to write.
      ncols: images per row of each grid; default ceil(sqrt(N)) of the largest.
      title: optional figure title.

    Returns:
      path, as a string.
    """
    panels = _panels(images_by_name, "images_by_name", "images", _check_images)
    shapes = {images.shape[1:] for images in panels.values()}
    if len(shapes) > 1:
        raise ValueError(f"every panel's images must have one [H, W, C], got {sorted(shapes)}")
    if ncols is None:
        ncols = math.ceil(math.sqrt(max(len(images) for images in panels.values())))
    _check_positive_int(ncols, "ncols")
    tiles = [_tile(images, ncols) for images in panels.values()]
    height = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles)
    scale = min(_INCHES_PER_PIXEL, _MAX_WIDTH / width, _MAX_HEIGHT / height)
    fig = _figure(
        (max(width * scale + 0.4 * len(tiles), 1.5), height * scale + (0.9 if title else 0.5)),
        layout="compressed",
    )
    axes = fig.subplots(1, len(tiles), squeeze=False)[0]
    for ax, (name, tiled) in zip(axes, zip(panels, tiles)):
        if tiled.shape[2] == 1:
            ax.imshow(tiled[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(tiled, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ---------------------------------------------------------------- scatter figures


def latent_scatter(
    codes: Any, labels: Any, path: PathLike, title: str | None = None
) -> str:
    """Codes in the plane, coloured by label.

    Integer or string labels with at most 20 distinct values are drawn as
    categories with a legend; other labels (e.g. floats) with a colorbar.

    Args:
      codes: [N, K], K ≥ 2; the first two dimensions are drawn.
      labels: [N] or None.
      path: the PNG to write.
      title: optional figure title.

    Returns:
      path, as a string.
    """
    codes = _check_codes(codes, "codes")
    labels = _check_labels(labels, len(codes))
    fig = _figure((6.5, 5.5))
    ax = fig.add_subplot()
    handles = _scatter(fig, ax, codes, labels)
    if handles:
        ax.legend(handles=handles, loc="best", fontsize="small", markerscale=2)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def side_by_side_scatter(
    codes_by_name: Mapping[str, Any],
    labels: Any,
    path: PathLike,
    title: str | None = None,
) -> str:
    """Several 2-D embeddings of the same examples side by side (e.g. PCA, AE, VAE).

    Args:
      codes_by_name: {name: codes [N, K], K ≥ 2}, one panel each, in order; the
        first two dimensions are drawn.
      labels: [N] or None, shared by every panel; coloured as in
        `latent_scatter`.
      path: the PNG to write.
      title: optional figure title.

    Returns:
      path, as a string.
    """
    panels = _panels(codes_by_name, "codes_by_name", "codes [N, K]", _check_codes)
    sizes = {len(codes) for codes in panels.values()}
    if labels is not None and len(sizes) > 1:
        raise ValueError(
            f"every embedding must have the same N to share labels, got {sorted(sizes)}"
        )
    labels = _check_labels(labels, sizes.pop() if len(sizes) == 1 else 0)
    fig = _figure((4.5 * len(panels) + 1.5, 4.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles: list[Any] = []
    for ax, (name, codes) in zip(axes, panels.items()):
        handles = _scatter(fig, ax, codes, labels, colorbar=ax is axes[-1])
        ax.set_title(name)
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize="small", markerscale=2)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------- training curves


def training_curves(
    history: Mapping[str, Sequence[float]], path: PathLike, title: str | None = None
) -> str:
    """One panel per metric against the epoch.

    Epochs far off a curve's bulk (a divergent first epoch, a one-epoch
    spike) are left off its y-scale, drawn in red at its edge and counted in
    its x label, so that the rest of a long run stays readable.

    Args:
      history: {metric name: [E] values per epoch}, e.g. keys "elbo",
        "reconstruction", "kl" (nats per example); epochs count from 1.
      path: the PNG to write.
      title: optional figure title.

    Returns:
      path, as a string.
    """
    if not isinstance(history, Mapping) or not history:
        raise ValueError("history must be a non-empty dict of name -> values per epoch")
    curves = {}
    for name, values in history.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(
                f"history[{name!r}] must be a non-empty 1-D sequence, got shape {values.shape}"
            )
        curves[str(name)] = values
    ncols = min(len(curves), 3)
    nrows = math.ceil(len(curves) / ncols)
    fig = _figure((4.0 * ncols, 3.0 * nrows + (0.4 if title else 0.0)))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, values) in zip(axes, curves.items()):
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, markersize=3)
        limits = _curve_limits(values)
        if limits is not None:     # a few epochs far off the rest: keep the rest readable
            ax.set_ylim(*limits)
            off = (values < limits[0]) | (values > limits[1])
            ax.plot(epochs[off], np.clip(values[off], *limits), "r^", markersize=5, clip_on=False)
            worst = int(np.argmax(np.where(off, np.abs(values - np.median(limits)), -1.0)))
            ax.set_xlabel(f"epoch (red: {int(off.sum())} off the scale, "
                          f"{worst + 1} at {values[worst]:.2g})")
        else:
            ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ------------------------------------------------------------------------ helpers


def _curve_limits(values: np.ndarray) -> tuple[float, float] | None:
    """y-limits that leave out epochs far off the bulk of a curve, or None if none is.

    The bulk is the 5th to 95th percentile; a value more than ten times its
    span beyond it is off the scale (a divergent first epoch, one epoch of a
    spike), so that the rest of a long run is not flattened to a line. A
    steady climb, however steep its first epochs, stays whole.
    """
    finite = values[np.isfinite(values)]
    if finite.size < 10:
        return None
    lo, hi = np.percentile(finite, [5, 95])
    span = max(hi - lo, 1e-6 * max(abs(lo), abs(hi), 1.0))
    inner = finite[(finite >= lo - 10 * span) & (finite <= hi + 10 * span)]
    if inner.size == finite.size:
        return None
    bottom, top = inner.min(), inner.max()
    margin = 0.05 * max(top - bottom, span)
    return float(bottom - margin), float(top + margin)


def _figure(figsize: tuple[float, float], layout: str = "constrained") -> Figure:
    fig = Figure(figsize=figsize, dpi=_DPI, layout=layout)
    FigureCanvasAgg(fig)  # attaches itself to fig
    return fig


def _save(fig: Figure, path: PathLike) -> str:
    """Writes fig as a PNG to path atomically; returns path as a string."""
    path = os.fspath(path)
    with files.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI)
    return path


def _check_images(images: Any, name: str) -> np.ndarray:
    """images -> [N, H, W, C] float64 clipped to [0, 1], or a one-line ValueError."""
    array = np.asarray(images)
    if array.ndim != 4:
        raise ValueError(f"{name} must have shape [N, H, W, C], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"{name} must hold at least one non-empty image, got shape {array.shape}")
    if array.shape[3] not in (1, 3, 4):
        raise ValueError(f"{name} must have C = 1, 3 or 4 channels, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.clip(array, 0.0, 1.0)


def _check_codes(codes: Any, name: str) -> np.ndarray:
    """codes -> [N, 2] float64 (the first two dimensions), or a one-line ValueError."""
    array = np.asarray(codes)
    if array.ndim != 2 or array.shape[1] < 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, K] with N >= 1, K >= 2, got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    return array[:, :2].astype(np.float64)


def _check_labels(labels: Any, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] (one per code), got {array.shape}")
    return array


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _grid_values(n: int, grid_values: Any) -> np.ndarray:
    if grid_values is None:
        return manifold_grid_values(n)
    values = np.asarray(grid_values, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"grid_values must have shape [{n}], got {values.shape}")
    return values


def _tile(images: np.ndarray, ncols: int, pad: int = _PAD) -> np.ndarray:
    """[N, H, W, C] -> one [rows·(H+pad)−pad, ncols·(W+pad)−pad, C] image, row-major."""
    n, height, width, channels = images.shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    canvas = np.full(
        (nrows * (height + pad) - pad, ncols * (width + pad) - pad, channels), _PAD_VALUE
    )
    for index, image in enumerate(images):
        top, left = (index // ncols) * (height + pad), (index % ncols) * (width + pad)
        canvas[top:top + height, left:left + width] = image
    return canvas


def _image_figure(
    tiled: np.ndarray, title: str | None, label_width: float = 0.0
) -> tuple[Figure, Any]:
    """A figure sized to show tiled [h, w, C] at ~0.6 in per 28 px, and its axes."""
    height, width = tiled.shape[:2]
    scale = min(
        _INCHES_PER_PIXEL,
        (_MAX_WIDTH - label_width) / width,
        _MAX_HEIGHT / height,
    )
    title_height = 0.4 if title else 0.0
    figsize = (
        max(width * scale + label_width + 0.2, 1.5),
        max(height * scale + title_height + 0.2, 1.0),
    )
    fig = _figure(figsize, layout="compressed")  # "compressed" suits fixed-aspect axes
    ax = fig.add_subplot()
    if tiled.shape[2] == 1:
        ax.imshow(tiled[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(tiled, interpolation="nearest")
    if title:
        ax.set_title(title)
    return fig, ax


def _row_ticks(ax: Any, height: int, labels: Sequence[str], pad: int = _PAD) -> None:
    """Labels the rows of a tiled image (rows of `height` px, `pad` px apart)."""
    centres = [i * (height + pad) + (height - 1) / 2 for i in range(len(labels))]
    ax.set_yticks(centres, labels)
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _scatter(
    fig: Figure, ax: Any, codes: np.ndarray, labels: np.ndarray | None, colorbar: bool = True
) -> list[Any]:
    """Draws codes [N, 2] coloured by labels [N]; returns legend handles (or [])."""
    size = float(np.clip(20000 / len(codes), 1.0, 30.0))
    ax.set_xlabel("dim 1")
    ax.set_ylabel("dim 2")
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=size, alpha=0.6, linewidths=0)
        return []
    categories = np.unique(labels)
    categorical = labels.dtype.kind in "biuUSO" and (
        labels.dtype.kind in "USO" or len(categories) <= _MAX_CATEGORIES
    )
    if not categorical:
        points = ax.scatter(
            codes[:, 0], codes[:, 1], c=labels.astype(np.float64), s=size, alpha=0.7,
            linewidths=0, cmap="viridis",
        )
        if colorbar:
            fig.colorbar(points, ax=ax, label="label")
        return []
    palette = colormaps["tab10" if len(categories) <= 10 else "tab20"]
    handles = []
    for index, category in enumerate(categories):
        mask = labels == category
        handles.append(
            ax.scatter(
                codes[mask, 0], codes[mask, 1], s=size, alpha=0.7, linewidths=0,
                color=palette(index % palette.N), label=str(category),
            )
        )
    return handles
