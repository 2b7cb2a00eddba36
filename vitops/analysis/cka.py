"""Centered kernel alignment (Kornblith et al. 2019) and minibatch CKA (Nguyen et al. 2021).

Features are (n, ...) and flattened per example. CKA is computed from n x n Gram matrices of
features centred over the examples first: centring before the product avoids the float32
cancellation of centring a Gram matrix afterwards. Biased CKA uses HSIC's plug-in estimator;
debiased CKA the unbiased estimator (Song et al. 2012), which needs n >= 4.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from ..backend.compile import compiled
from ..errors import AnalysisError
from ._checks import as_tensor
from .accumulate import Accumulator, state_array, state_count


def _features(x, name):
    x = as_tensor(x, name)
    if len(x.shape) < 2:
        raise AnalysisError(f"{name} must be (examples, features...), got shape {tuple(x.shape)}")
    x = ops.reshape(ops.cast(x, "float32"), (x.shape[0], -1))  # (n, p)
    return x - ops.mean(x, axis=0, keepdims=True)


def _pair(x, y, debiased):
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[0] != y.shape[0]:
        raise AnalysisError(f"x and y must hold the same examples: {x.shape[0]} != {y.shape[0]}")
    if debiased and x.shape[0] < 4:
        raise AnalysisError(f"the unbiased HSIC estimator needs at least 4 examples, got {x.shape[0]}")
    return x, y


def _center_gram(k):
    """H K H for H = I - 11^T / n."""
    k = k - ops.mean(k, axis=0, keepdims=True)
    return k - ops.mean(k, axis=1, keepdims=True)


def _u_center(k):
    """U-centring of Gram matrices (..., n, n) (Szekely & Rizzo 2014): with it, the unbiased
    HSIC estimator (Song et al. 2012) is a plain inner product, <U(K), U(L)> / (n (n - 3)).

    Subtracting means entry by entry, rather than expanding the estimator into sums of whole
    matrices that cancel, keeps float32 accurate for kernels with large means (RBF).
    """
    n = k.shape[-1]
    off = 1.0 - ops.eye(n, dtype=k.dtype)
    k = k * off
    means = ops.sum(k, axis=-1) / (n - 2)  # (..., n); K is symmetric
    means = means - ops.sum(means, axis=-1, keepdims=True) / (2 * (n - 1))
    return (k - means[..., :, None] - means[..., None, :]) * off


def _unbiased_hsic_matrix(ka, kb):
    """Unbiased HSIC for every pair of Gram stacks (A, n, n), (B, n, n) -> (A, B): one matmul."""
    n = ka.shape[-1]
    ua = ops.reshape(_u_center(ka), (ka.shape[0], n * n))
    ub = ua if kb is ka else ops.reshape(_u_center(kb), (kb.shape[0], n * n))
    return ops.matmul(ua, ops.transpose(ub)) / (n * (n - 3))


def _cka_from_grams(kx, ky, debiased):
    """CKA of two (n, n) Gram matrices, kx of x's features and ky of y's."""
    if debiased:
        h = _unbiased_hsic_matrix(ops.stack([kx, ky]), ops.stack([kx, ky]))  # (2, 2)
        return h[0, 1] / ops.sqrt(h[0, 0] * h[1, 1])
    kx, ky = _center_gram(kx), _center_gram(ky)
    return ops.sum(kx * ky) / ops.sqrt(ops.sum(kx * kx) * ops.sum(ky * ky))


@compiled(static_argnames=("debiased",), inference=True)
def _linear_cka(x, y, debiased):
    return _cka_from_grams(ops.matmul(x, ops.transpose(x)), ops.matmul(y, ops.transpose(y)), debiased)


def linear_cka(x, y, debiased: bool = False):
    """Linear CKA of features x (n, ...) and y (n, ...): a scalar in [0, 1] (biased)."""
    x, y = _pair(x, y, debiased)
    return _linear_cka(x, y, debiased=bool(debiased))


def _rbf_gram(x, sigma):
    """exp(-d^2 / (2 sigma^2 median(d^2))), the median over all n^2 entries (Kornblith et al.)."""
    g = ops.matmul(x, ops.transpose(x))
    norms = ops.diagonal(g)
    sq = ops.maximum(norms[:, None] + norms[None, :] - 2.0 * g, 0.0)
    med = ops.median(ops.reshape(sq, (-1,)))
    return ops.exp(-sq / (2.0 * sigma**2 * med))


@compiled(static_argnames=("sigma", "debiased"), inference=True)
def _rbf_cka(x, y, sigma, debiased):
    return _cka_from_grams(_rbf_gram(x, sigma), _rbf_gram(y, sigma), debiased)


def rbf_cka(x, y, sigma: float = 0.5, debiased: bool = False):
    """RBF-kernel CKA; sigma is a fraction of the median pairwise distance."""
    if sigma <= 0:
        raise AnalysisError(f"sigma must be positive, got {sigma}")
    x, y = _pair(x, y, debiased)
    return _rbf_cka(x, y, sigma=float(sigma), debiased=bool(debiased))


class MinibatchCKA(Accumulator):
    """Linear CKA between every layer of one list and every layer of another, over batches.

    cka = MinibatchCKA()
    for batch in batches: cka.update(hidden_a, hidden_b)   # lists of (n, ...) arrays
    cka.result()  # (layers_a, layers_b) numpy array

    Each batch adds its unbiased HSIC for every pair; the ratio HSIC(K, L) / sqrt(HSIC(K, K)
    HSIC(L, L)) is formed once at the end (Nguyen et al. 2021, Eq. 3). Batches need n >= 4 and
    the same n in both lists; the sums are kept in float64 on the host, so states merge exactly.
    `update_grams` takes the per-layer Gram matrices instead of the features (what the forward
    pass's reductions return), so features never leave the model.
    """

    kind = "minibatch_cka"

    def __init__(self):
        self._xy = self._xx = self._yy = None
        self.batches = 0

    @property
    def empty(self) -> bool:
        return self.batches == 0

    @staticmethod
    def _check(features, name):
        if not isinstance(features, (list, tuple)) or not features:
            raise AnalysisError(f"{name} must be a non-empty list of (n, ...) feature arrays, one per layer")
        xs = [as_tensor(f, f"{name}[{i}]") for i, f in enumerate(features)]
        for i, x in enumerate(xs):
            if len(x.shape) < 2:
                raise AnalysisError(
                    f"{name}[{i}] must be (examples, features...), got shape {tuple(x.shape)}"
                )
        n = {x.shape[0] for x in xs}
        if len(n) != 1:
            raise AnalysisError(f"{name}: layers hold different numbers of examples {sorted(n)}")
        return xs, n.pop()

    def update(self, features_a, features_b=None) -> None:
        """features_b defaults to features_a (the layer-by-layer matrix of one model)."""
        xa, n = self._check(features_a, "features_a")
        if features_b is not None:
            xb, nb = self._check(features_b, "features_b")
            if nb != n:
                raise AnalysisError(
                    f"features_a and features_b hold different numbers of examples: {n} != {nb}"
                )
        self._check_batch(n, (len(xa), len(xa) if features_b is None else len(xb)))
        ga, gb = _gram_stacks(xa) if features_b is None else _gram_stacks(xa, xb)
        self._add(_hsic_terms(ga) if gb is None else _hsic_terms(ga, gb))

    def update_grams(self, grams_a, grams_b=None) -> None:
        """grams_a (layers_a, n, n), grams_b (layers_b, n, n): each layer's Gram matrix of its
        features centred over the batch (`Reductions(grams=True)`); grams_b defaults to grams_a."""
        ga = as_tensor(grams_a, "grams_a")
        gb = None if grams_b is None else as_tensor(grams_b, "grams_b")
        for g, name in ((ga, "grams_a"), (gb, "grams_b")):
            if g is not None and (len(g.shape) != 3 or g.shape[1] != g.shape[2]):
                raise AnalysisError(f"{name} must be (layers, n, n), got shape {tuple(g.shape)}")
        if gb is not None and gb.shape[1] != ga.shape[1]:
            raise AnalysisError(
                f"grams_a and grams_b hold different numbers of examples: {ga.shape[1]} != {gb.shape[1]}"
            )
        self._check_batch(ga.shape[1], (ga.shape[0], ga.shape[0] if gb is None else gb.shape[0]))
        self._add(_hsic_terms(ga) if gb is None else _hsic_terms(ga, gb))

    def _check_batch(self, n, shape):
        if n < 4:
            raise AnalysisError(f"minibatch CKA needs at least 4 examples per batch (unbiased HSIC), got {n}")
        if self._xy is not None and self._xy.shape != shape:
            raise AnalysisError(
                f"this batch has {shape[0]} x {shape[1]} layers, earlier ones had "
                f"{self._xy.shape[0]} x {self._xy.shape[1]}"
            )

    def _add(self, terms):
        xy, xx, yy = (ops.convert_to_numpy(v).astype(np.float64) for v in terms)
        if self._xy is None:
            self._xy, self._xx, self._yy = xy, xx, yy
        else:
            self._xy += xy
            self._xx += xx
            self._yy += yy
        self.batches += 1

    def result(self) -> np.ndarray:
        if not self.batches:
            raise AnalysisError("no batches were added: call update() first")
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN inputs give NaN, said once by the report
            return self._xy / np.sqrt(np.outer(self._xx, self._yy))

    def state(self) -> dict:
        if self.empty:
            return {"batches": np.zeros((), np.int64)}
        return {"xy": self._xy, "xx": self._xx, "yy": self._yy, "batches": np.asarray(self.batches, np.int64)}

    def set_state(self, arrays) -> None:
        batches = state_count(arrays, "batches")
        if batches:
            xy = state_array(arrays, "xy", "f", ndim=2)
            self._xx = state_array(arrays, "xx", "f", (xy.shape[0],)).astype(np.float64)
            self._yy = state_array(arrays, "yy", "f", (xy.shape[1],)).astype(np.float64)
            self._xy = xy.astype(np.float64)
        self.batches = batches

    def _merge_state(self, other) -> None:
        if other._xy.shape != self._xy.shape:
            raise AnalysisError(
                f"cannot merge CKA over {other._xy.shape[0]} x {other._xy.shape[1]} "
                f"layers into one over {self._xy.shape[0]} x {self._xy.shape[1]}"
            )
        self._xy = self._xy + other._xy
        self._xx = self._xx + other._xx
        self._yy = self._yy + other._yy
        self.batches += other.batches


def centred_gram(x):
    """(n, ...) features -> (n, n) Gram matrix of the features centred over the n examples, in
    float32. Centring before the product avoids the cancellation of centring a Gram after."""
    x = ops.reshape(ops.cast(x, "float32"), (x.shape[0], -1))  # (n, p)
    x = x - ops.mean(x, axis=0, keepdims=True)
    return ops.matmul(x, ops.transpose(x))


def _gram_stack(xs):
    """Features per layer -> Gram matrices (layers, n, n); one batched matmul when widths agree."""
    xs = [ops.reshape(ops.cast(x, "float32"), (x.shape[0], -1)) for x in xs]
    if len({x.shape for x in xs}) == 1:
        stacked = ops.stack(xs)  # (layers, n, p)
        stacked = stacked - ops.mean(stacked, axis=1, keepdims=True)
        return ops.matmul(stacked, ops.transpose(stacked, (0, 2, 1)))
    return ops.stack([centred_gram(x) for x in xs])


def _flat_u(grams):
    """(layers, n, n) Grams -> (layers, n * n) U-centred, scaled so that a row's inner product
    with another is their unbiased HSIC."""
    u = _u_center(grams)
    n = u.shape[-1]
    return ops.reshape(u, (u.shape[0], n * n)) / np.sqrt(n * (n - 3))


@compiled(inference=True)
def _hsic_terms(ga, gb=None):
    """One batch's unbiased HSIC from Gram stacks (A, n, n) and (B, n, n): all pairs (A, B),
    and each layer with itself (A,), (B,)."""
    ua = _flat_u(ga)
    self_a = ops.sum(ua * ua, axis=-1)
    if gb is None:
        return ops.matmul(ua, ops.transpose(ua)), self_a, self_a
    ub = _flat_u(gb)
    return ops.matmul(ua, ops.transpose(ub)), self_a, ops.sum(ub * ub, axis=-1)


@compiled(inference=True)
def _gram_stacks(xa, xb=None):
    return _gram_stack(xa), None if xb is None else _gram_stack(xb)
