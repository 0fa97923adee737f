"""tfp_vae.plots: every figure is a valid PNG, written atomically; bad input is refused."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from tfp_vae import plots

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(16, 28, 28, 1))  # [N, H, W, C]
RGB = RNG.uniform(size=(6, 8, 8, 3))
CODES = RNG.normal(size=(300, 3))  # [N, K]; the plots draw the first two dims
LABELS = np.repeat(np.arange(10), 30)  # [N]
HISTORY = {  # per epoch, nats per example
    "elbo": [-180.0, -120.0, -105.0],
    "reconstruction": [170.0, 100.0, 90.0],
    "kl": [10.0, 20.0, 15.0],
}

FIGURES: dict[str, Callable[[pathlib.Path], str]] = {
    "image_grid": lambda p: plots.image_grid(IMAGES, p, title="grid"),
    "image_grid_rgb": lambda p: plots.image_grid(RGB, p, ncols=4),
    "samples": lambda p: plots.samples(IMAGES, p),
    "reconstructions": lambda p: plots.reconstructions(IMAGES[:8], 1 - IMAGES[:8], p),
    "reconstructions_wrapped": lambda p: plots.reconstructions(
        IMAGES, IMAGES, p, title="wrapped", ncols=5
    ),
    "latent_manifold": lambda p: plots.latent_manifold(IMAGES, p, title="manifold"),
    "latent_manifold_values": lambda p: plots.latent_manifold(
        IMAGES, p, grid_values=np.linspace(-2, 2, 4)
    ),
    "latent_scatter_categories": lambda p: plots.latent_scatter(CODES, LABELS, p, title="z"),
    "latent_scatter_strings": lambda p: plots.latent_scatter(CODES, LABELS.astype(str), p),
    "latent_scatter_continuous": lambda p: plots.latent_scatter(CODES, CODES[:, 2], p),
    "latent_scatter_unlabelled": lambda p: plots.latent_scatter(CODES, None, p),
    "side_by_side_scatter": lambda p: plots.side_by_side_scatter(
        {"PCA": CODES[:, :2], "AE": CODES[:, 1:], "VAE": -CODES}, LABELS, p
    ),
    "side_by_side_scatter_unlabelled": lambda p: plots.side_by_side_scatter(
        {"PCA": CODES, "VAE": CODES[:50]}, None, p, title="two"
    ),
    "interpolation": lambda p: plots.interpolation(IMAGES[:10], p, title="interpolation"),
    "rows_by_class": lambda p: plots.rows_by_class(IMAGES, 4, p, row_labels="abcd"),
    "rows_by_class_unlabelled": lambda p: plots.rows_by_class(IMAGES, 8, p),
    "training_curves": lambda p: plots.training_curves(HISTORY, p, title="training"),
    "training_curves_one": lambda p: plots.training_curves({"loss": [1.0]}, p),
    "training_curves_spike": lambda p: plots.training_curves(
        {"kl": [7e5] + [20.0] * 40 + [1.2e6] + [20.0] * 8}, p),
}


def assert_one_line_value_error(fn: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------- the PNGs


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_writes_a_valid_png_and_nothing_else(name: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / f"{name}.png"
    assert FIGURES[name](path) == str(path)
    assert path.stat().st_size > 0
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] == 4  # [height, width, RGBA]
    assert pixels.shape[0] >= 100 and pixels.shape[1] >= 100
    assert pixels[..., :3].std() > 0, "the figure is blank"
    assert os.listdir(tmp_path) == [path.name], "temporary files were left behind"


def test_creates_parent_directories_and_takes_str_paths(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "figures" / "deep" / "grid.png")
    assert plots.image_grid(IMAGES, path) == path
    assert os.path.getsize(path) > 0


def test_images_are_drawn_in_grayscale_at_the_requested_layout(tmp_path: pathlib.Path) -> None:
    black = np.zeros((3, 28, 28, 1))
    pixels = matplotlib.image.imread(plots.image_grid(black, tmp_path / "black.png"))
    assert pixels[..., :3].min() == 0.0  # the images, black
    assert pixels[..., :3].max() == 1.0  # the background, white
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])  # gray, no colour
    wide = matplotlib.image.imread(plots.interpolation(IMAGES[:8], tmp_path / "row.png"))
    assert wide.shape[1] > 3 * wide.shape[0], "an interpolation is one row"


def test_overwrites_atomically_and_cleans_up_on_failure(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "grid.png"
    plots.image_grid(IMAGES, path)
    plots.image_grid(IMAGES[:4], path)  # replaces the existing file
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.image_grid(IMAGES, path)
    assert path.read_bytes() == before, "a failed write must leave the old figure intact"
    assert os.listdir(tmp_path) == ["grid.png"]


def test_needs_neither_tensorflow_nor_a_display(tmp_path: pathlib.Path) -> None:
    """The module alone (not the package, whose __init__ may import TF) draws a figure
    with an interactive backend configured and no display: it never asks for either."""
    module = pathlib.Path(plots.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('plots', {str(module)!r})\n"
        "plots = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(plots)\n"
        "import numpy as np\n"
        f"plots.image_grid(np.zeros((4, 8, 8, 1)), {str(tmp_path / 'grid.png')!r})\n"
        "assert 'tensorflow' not in sys.modules, 'plots imported tensorflow'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'plots imported pyplot'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "MPLBACKEND": "TkAgg"})
    assert (tmp_path / "grid.png").stat().st_size > 0


# ------------------------------------------------------------ the latent grid


def test_training_curves_leave_out_far_epochs_and_nothing_of_a_steady_climb() -> None:
    # A run's history: a divergent first epoch and one spike (epoch 722 of a
    # Fashion-MNIST HVAE: mean KL 1.2e6 nats) around a warm-up and a plateau.
    rng = np.random.default_rng(0)
    kl = np.concatenate([[7.2e5, 1.9e3], 20 + 80 * np.exp(-np.arange(100) / 20),
                         19.2 + 0.1 * rng.standard_normal(600), [1.19e6], np.full(9, 19.6)])
    bottom, top = plots._curve_limits(kl)
    bulk = kl[2:][kl[2:] < 1e5]
    assert bottom < bulk.min() and top > bulk.max()          # every other epoch on the scale
    assert top < 0.1 * bulk.max() + bulk.max() and np.sum((kl < bottom) | (kl > top)) == 3
    # A steep climb, a short run, a flat one: the whole curve is drawn.
    assert plots._curve_limits(-120 - 400 * np.exp(-np.arange(30) / 2.0)) is None
    assert plots._curve_limits(np.array([-540.0, -300, -200, -150])) is None
    assert plots._curve_limits(np.full(50, -118.3)) is None


def test_manifold_grid_values_are_normal_quantiles() -> None:
    np.testing.assert_allclose(plots.manifold_grid_values(1), [0.0], atol=1e-12)
    np.testing.assert_allclose(
        plots.manifold_grid_values(2), [-0.6744897501960817, 0.6744897501960817], rtol=1e-9
    )
    values = plots.manifold_grid_values(20)
    assert values.shape == (20,) and np.all(np.diff(values) > 0)
    np.testing.assert_allclose(values, -values[::-1], atol=1e-12)
    np.testing.assert_allclose(values[-1], 1.959963984540054, rtol=1e-9)  # Φ⁻¹(0.975)


def test_manifold_latents_order_matches_the_figure() -> None:
    """Image i * n + j sits in row i, column j: z₁ grows rightwards, z₂ upwards."""
    values = plots.manifold_grid_values(3)
    z = plots.manifold_latents(3)
    assert z.shape == (9, 2)
    np.testing.assert_array_equal(z[0], [values[0], values[2]])  # top left
    np.testing.assert_array_equal(z[2], [values[2], values[2]])  # top right
    np.testing.assert_array_equal(z[6], [values[0], values[0]])  # bottom left
    np.testing.assert_array_equal(z[5], [values[2], values[1]])  # row 1, column 2
    np.testing.assert_array_equal(
        plots.manifold_latents(2, [-1.0, 1.0]), [[-1, 1], [1, 1], [-1, -1], [1, -1]]
    )


# ------------------------------------------------------------------ bad input

FLAT = np.zeros((4, 784))  # the wrong rank for images


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p: plots.image_grid(FLAT, p), r"images must have shape \[N, H, W, C\]"),
        (lambda p: plots.image_grid(IMAGES[0], p), r"images must have shape \[N, H, W, C\]"),
        (lambda p: plots.samples(FLAT, p), r"images must have shape \[N, H, W, C\]"),
        (lambda p: plots.interpolation(FLAT, p), r"images must have shape \[N, H, W, C\]"),
        (lambda p: plots.latent_manifold(FLAT, p), r"images must have shape \[N, H, W, C\]"),
        (lambda p: plots.rows_by_class(FLAT, 2, p), r"images must have shape \[N, H, W, C\]"),
        (lambda p: plots.reconstructions(FLAT, FLAT, p), r"originals must have shape"),
        (lambda p: plots.reconstructions(IMAGES, FLAT, p), r"recons must have shape"),
        (lambda p: plots.latent_scatter(CODES[:, 0], None, p), r"codes must have shape \[N, K\]"),
        (lambda p: plots.latent_scatter(CODES[:, :1], None, p), r"K >= 2"),
        (lambda p: plots.latent_scatter(CODES, LABELS[:, None], p), r"labels .* \[300\]"),
        (lambda p: plots.side_by_side_scatter({"a": CODES[None]}, None, p), r"\['a'\] must"),
        (lambda p: plots.training_curves({"elbo": [[1.0, 2.0]]}, p), r"\['elbo'\] .* 1-D"),
    ],
)
def test_wrong_rank_is_a_one_line_value_error(call, match: str, tmp_path: pathlib.Path) -> None:
    assert_one_line_value_error(lambda: call(tmp_path / "bad.png"), match)
    assert os.listdir(tmp_path) == [], "nothing is written for bad input"


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p: plots.image_grid(np.zeros((2, 8, 8, 2)), p), "C = 1, 3 or 4"),
        (lambda p: plots.image_grid(np.zeros((0, 8, 8, 1)), p), "at least one"),
        (lambda p: plots.image_grid(np.full((2, 8, 8, 1), np.nan), p), "NaN or infinite"),
        (lambda p: plots.image_grid(IMAGES, p, ncols=0), "ncols must be a positive int"),
        (lambda p: plots.reconstructions(IMAGES, IMAGES[:3], p), "the same shape"),
        (lambda p: plots.latent_manifold(IMAGES[:15], p), "n \\* n images, got 15"),
        (lambda p: plots.latent_manifold(IMAGES, p, grid_values=[0, 1]), r"grid_values .* \[4\]"),
        (lambda p: plots.rows_by_class(IMAGES, 5, p), "multiple of n_per_row"),
        (lambda p: plots.rows_by_class(IMAGES, 4, p, row_labels=["a"]), "row_labels must have 4"),
        (lambda p: plots.side_by_side_scatter({}, None, p), "non-empty dict"),
        (lambda p: plots.side_by_side_scatter({"a": CODES, "b": CODES[:9]}, LABELS, p), "same N"),
        (lambda p: plots.training_curves({}, p), "non-empty dict"),
        (lambda p: plots.training_curves({"kl": []}, p), "non-empty 1-D"),
        (lambda p: plots.manifold_grid_values(0), "positive int"),
    ],
)
def test_other_bad_input_is_a_one_line_value_error(
    call, match: str, tmp_path: pathlib.Path
) -> None:
    assert_one_line_value_error(lambda: call(tmp_path / "bad.png"), match)
    assert os.listdir(tmp_path) == []
