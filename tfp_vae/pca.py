"""Principal component analysis by one SVD of the centred data (`tf.linalg.svd`).

Zero-mean data X (N×D) factorises as X = U Σ Wᵀ; the first k rows of Wᵀ are the
principal directions, the codes are X W_k and the reconstruction is
X W_k W_kᵀ + mean. Conventions follow scikit-learn's `PCA(svd_solver="full")`
exactly (scikit-learn ≥ 1.5): variances divide by N − 1, and each component's
sign is fixed so that its largest-magnitude entry is positive (sklearn's
`svd_flip(..., u_based_decision=False)`), so `components_` agree with
scikit-learn's entry for entry, not only up to sign.

Example:

    pca = PCA(n_components=32).fit(images)        # images [N, 28, 28, 1]
    codes = pca.transform(images)                 # [N, 32]
    recon = pca.inverse_transform(codes)          # [N, 28, 28, 1]
    errors = pca.reconstruction_error(images)     # {0: ..., 1: ..., ..., 32: ...}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf


class PCA:
    """PCA with k components, fitted by a single SVD.

    Args:
      n_components: k, the number of components kept; 1 ≤ k ≤ min(N, D), checked
        at `fit`.
      dtype: the floating dtype of the computation and of every returned array.
        float64 (the default) matches scikit-learn to ~1e-12; float32 is faster.

    Attributes (set by `fit`, all numpy arrays of `dtype`):
      components_: [k, D] principal directions, orthonormal rows, by decreasing
        variance.
      explained_variance_: [k] variance of the data along each component
        (squared singular value / (N − 1)).
      explained_variance_ratio_: [k] explained_variance_ / total variance of the
        data (over all D dimensions).
      singular_values_: [k] the k largest singular values of the centred data.
      noise_variance_: float, mean variance of the discarded directions (the
        maximum-likelihood noise variance of probabilistic PCA; 0 when
        k = min(N, D)), as scikit-learn defines it.
      mean_: [D] per-feature mean of the training data.
      data_shape_: the shape of one example as given to `fit`, e.g. (784,) or
        (28, 28, 1); `inverse_transform` returns this shape.
      n_samples_: N, the number of training examples.
    """

    def __init__(self, n_components: int, dtype: tf.DType | str = tf.float64) -> None:
        if isinstance(n_components, bool) or not isinstance(
            n_components, (int, np.integer)
        ):
            raise ValueError(
                f"n_components must be an int, got {type(n_components).__name__}"
            )
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        dtype = tf.as_dtype(dtype)
        if not dtype.is_floating:
            raise ValueError(f"dtype must be a floating dtype, got {dtype.name}")
        self.n_components = int(n_components)
        self.dtype = dtype
        self.components_: np.ndarray | None = None
        self.explained_variance_: np.ndarray | None = None
        self.explained_variance_ratio_: np.ndarray | None = None
        self.singular_values_: np.ndarray | None = None
        self.noise_variance_: float | None = None
        self.mean_: np.ndarray | None = None
        self.data_shape_: tuple[int, ...] | None = None
        self.n_samples_: int | None = None
        # All min(N, D) directions, kept so that `reconstruction_error` can
        # report any k, not only k ≤ n_components. [min(N, D), D]
        self._all_components: tf.Tensor | None = None

    def __repr__(self) -> str:
        return f"PCA(n_components={self.n_components}, dtype={self.dtype.name})"

    # ----------------------------------------------------------------- fitting

    def fit(self, x: Any) -> PCA:
        """Fits the components to data.

        Args:
          x: [N, D] or [N, *data_shape] (e.g. [N, H, W, C]), numpy or tf, any
            real dtype; N ≥ 2; finite.

        Returns:
          self.
        """
        x = self._as_tensor(x, "x")
        if x.shape.rank < 2:
            raise ValueError(
                f"x must have shape [N, D] or [N, *data_shape], got shape {x.shape}"
            )
        n = int(x.shape[0])
        data_shape = tuple(int(d) for d in x.shape[1:])
        d = int(np.prod(data_shape))
        if n < 2:
            raise ValueError(f"fit needs at least 2 examples, got {n}")
        if self.n_components > min(n, d):
            raise ValueError(
                f"n_components={self.n_components} must be <= min(N, D) = "
                f"min({n}, {d}) = {min(n, d)}"
            )
        x = tf.reshape(x, [n, d])

        mean = tf.reduce_mean(x, axis=0)  # [D]
        s, _, w = tf.linalg.svd(x - mean, full_matrices=False)  # [r], _, [D, r]
        vt = tf.transpose(w)  # [r, D], r = min(N, D)
        # sklearn's svd_flip(u_based_decision=False): the largest-|.| entry of
        # each component is positive, so the result does not depend on LAPACK.
        pivots = tf.gather(vt, tf.argmax(tf.abs(vt), axis=1), axis=1, batch_dims=1)
        vt = vt * tf.sign(pivots)[:, None]  # pivots ≠ 0: rows have unit norm

        variance = tf.square(s) / (n - 1)  # [r]
        k = self.n_components
        self.mean_ = mean.numpy()
        self.singular_values_ = s[:k].numpy()
        self.components_ = vt[:k].numpy()
        self.explained_variance_ = variance[:k].numpy()
        self.explained_variance_ratio_ = (variance[:k] / tf.reduce_sum(variance)).numpy()
        self.noise_variance_ = (
            float(tf.reduce_mean(variance[k:])) if k < min(n, d) else 0.0
        )
        self.data_shape_ = data_shape
        self.n_samples_ = n
        self._all_components = vt
        return self

    # -------------------------------------------------------------- transforms

    def transform(self, x: Any) -> np.ndarray:
        """Projects data onto the components.

        Args:
          x: [N, D] or [N, *data_shape], D as at `fit`.

        Returns:
          codes [N, k] = (x − mean_) components_ᵀ.
        """
        centred = self._centred(x)  # [N, D]
        return tf.matmul(centred, self.components_, transpose_b=True).numpy()

    def inverse_transform(self, codes: Any) -> np.ndarray:
        """Maps codes back to data space.

        Args:
          codes: [N, k].

        Returns:
          reconstructions [N, *data_shape] = codes components_ + mean_, in the
          shape the model was fitted on.
        """
        self._check_fitted()
        codes = self._as_tensor(codes, "codes")
        if codes.shape.rank != 2 or codes.shape[1] != self.n_components:
            raise ValueError(
                f"codes must have shape [N, {self.n_components}], got {codes.shape}"
            )
        x = tf.matmul(codes, self.components_) + self.mean_  # [N, D]
        return tf.reshape(x, [-1, *self.data_shape_]).numpy()

    def reconstruction_error(
        self, x: Any, ks: Iterable[int] | None = None
    ) -> dict[int, float]:
        """Squared reconstruction error as a function of the number of components.

        One projection serves every k: with codes c = (x − mean_) Wᵀ on the
        orthonormal directions W, ‖x − x̂_k‖² = ‖x − mean_‖² − Σ_{j≤k} c_j², so
        the errors for all k cost one matrix product with max(ks) directions.

        Args:
          x: [N, D] or [N, *data_shape].
          ks: the numbers of components to report, each in 0 … min(N_fit, D)
            (k may exceed n_components: all directions of the fit are kept).
            Default: 0, 1, …, n_components.

        Returns:
          {k: mean over the N examples of Σ_pixels (x − x̂_k)²}, ordered as ks.
          On the training data, error(k) = (N − 1)/N × Σ_{j>k} explained
          variance_j.
        """
        centred = self._centred(x)  # [N, D]
        rank = int(self._all_components.shape[0])
        ks = list(range(self.n_components + 1) if ks is None else ks)
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise ValueError(f"ks must be ints, got {k!r}")
            if not 0 <= k <= rank:
                raise ValueError(f"each k must be in [0, {rank}], got {k}")
        k_max = max(ks, default=0)
        codes = tf.matmul(centred, self._all_components[:k_max], transpose_b=True)
        total = tf.reduce_mean(tf.reduce_sum(tf.square(centred), axis=1))
        explained = tf.concat(
            [tf.zeros([1], centred.dtype),
             tf.cumsum(tf.reduce_mean(tf.square(codes), axis=0))],
            axis=0,
        )  # [k_max + 1], explained[k] = mean Σ_{j≤k} c_j²
        # Clipped because the difference can round a hair below zero at k = rank.
        errors = tf.maximum(total - explained, 0).numpy()
        return {int(k): float(errors[k]) for k in ks}

    # ----------------------------------------------------------------- helpers

    def _as_tensor(self, x: Any, name: str) -> tf.Tensor:
        try:
            t = tf.convert_to_tensor(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be array-like: {e}".splitlines()[0]) from e
        if not (t.dtype.is_floating or t.dtype.is_integer or t.dtype.is_bool):
            raise ValueError(f"{name} must be real numbers, got dtype {t.dtype.name}")
        t = tf.cast(t, self.dtype)
        if not bool(tf.reduce_all(tf.math.is_finite(t))):
            raise ValueError(f"{name} contains NaN or infinite values")
        return t

    def _check_fitted(self) -> None:
        if self.components_ is None:
            raise ValueError("this PCA is not fitted yet: call fit(x) first")

    def _centred(self, x: Any) -> tf.Tensor:
        """x [N, D] or [N, *data_shape] -> x − mean_, [N, D]."""
        self._check_fitted()
        x = self._as_tensor(x, "x")
        d = int(self.mean_.shape[0])
        if x.shape.rank < 2 or int(np.prod(x.shape[1:])) != d:
            shapes = dict.fromkeys(
                [f"[N, {d}]", f"[N, {', '.join(map(str, self.data_shape_))}]"]
            )
            raise ValueError(
                f"x must have shape {' or '.join(shapes)} as at fit, got {x.shape}"
            )
        return tf.reshape(x, [-1, d]) - self.mean_
