"""Closed-form KL divergence, cross-entropy and entropy of multivariate Gaussians with full covariance.

Each distribution is given by its mean and the lower Cholesky factor of its
covariance (``scale_tril``, as distrax/TFP's ``MultivariateNormalTri``); the
argument order is the KL order, as in :mod:`jaxdiv._gaussian` (the model first,
the target second). The log-determinant ratio and the trace term are formed
from the triangular factors, never from the covariances, so nearly equal
distributions keep their relative accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jax.typing import ArrayLike

from jaxdiv import _series
from jaxdiv import _validation as v
from jaxdiv._gaussian import HALF_LOG_2PI_E, LOG_2PI


def _tril_args(mean, scale_tril, mean_name, tril_name):
  mu = v.as_floating(mean_name, mean)
  tril = v.as_floating(tril_name, scale_tril)
  if mu.ndim < 1 or tril.ndim < 2 or tril.shape[-2:] != (mu.shape[-1], mu.shape[-1]):
    raise ValueError(
        f"{tril_name} must have shape [..., dim, dim] with dim = {mean_name}.shape[-1]; got "
        f"{mean_name} {list(mu.shape)} and {tril_name} {list(tril.shape)}."
    )
  return mu, tril


def _log_abs_diagonal(tril: jax.Array) -> jax.Array:
  return jnp.log(jnp.abs(jnp.diagonal(tril, axis1=-2, axis2=-1)))


def log_ratio(a: jax.Array, b: jax.Array) -> jax.Array:
  """``log(a / b)`` for positive ``a``, ``b``, accurate when ``a ≈ b``.

  ``log a - log b`` loses the digits of a ratio near 1 to the rounding of each
  log (10% of ``s`` at ``a/b = 1 + 1e-6`` in float32); ``log1p((a - b) / b)``
  keeps them (``a - b`` is exact there) but fails for ``a ≪ b``. Each form is
  used where it is accurate, and the other branch is fed a harmless value.
  """
  near = jnp.abs(a - b) <= 0.5 * b
  safe_b = jnp.where(near, b, 1)
  ratio_m1 = jnp.where(near, (a - b) / safe_b, 0)
  far = jnp.log(jnp.where(near, 1, a)) - jnp.log(jnp.where(near, 1, b))
  return jnp.where(near, jnp.log1p(ratio_m1), far)


def _mvn_pair(mean, scale_tril, target_mean, target_scale_tril):
  """Both (mean, lower factor) pairs checked, cast and broadcast to one batch shape."""
  m1, l1 = _tril_args(mean, scale_tril, "mean", "scale_tril")
  m2, l2 = _tril_args(target_mean, target_scale_tril, "target_mean", "target_scale_tril")
  if m1.shape[-1] != m2.shape[-1]:
    raise ValueError(
        f"target_mean must have the event size of mean, {m1.shape[-1]}; got {list(m2.shape)}."
    )
  m1, l1, m2, l2 = v.to_compute(m1, l1, m2, l2)
  try:
    batch = jnp.broadcast_shapes(m1.shape[:-1], l1.shape[:-2], m2.shape[:-1], l2.shape[:-2])
  except ValueError:
    raise ValueError(
        "the batch shapes of mean, scale_tril, target_mean and target_scale_tril must broadcast; got "
        f"{list(m1.shape[:-1])}, {list(l1.shape[:-2])}, {list(m2.shape[:-1])} and {list(l2.shape[:-2])}."
    ) from None
  k = m1.shape[-1]
  m1, m2 = (jnp.broadcast_to(a, batch + (k,)) for a in (m1, m2))
  l1, l2 = (jnp.broadcast_to(jnp.tril(a), batch + (k, k)) for a in (l1, l2))
  return m1, l1, m2, l2


def _mahalanobis_term(m1, m2, l2):
  """``½ ‖L'⁻¹(μ − μ')‖²``."""
  y = solve_triangular(l2, (m1 - m2)[..., None], lower=True)[..., 0]
  return 0.5 * jnp.sum(jnp.square(y), axis=-1)


def multivariate_normal_kl_divergence(
    mean: ArrayLike,
    scale_tril: ArrayLike,
    target_mean: ArrayLike,
    target_scale_tril: ArrayLike,
) -> jax.Array:
  r"""KL(N(mean, L Lᵀ) ‖ N(target_mean, L' L'ᵀ)) from Cholesky factors.

  .. math:: \mathrm{KL} = \tfrac12\Big(\lVert L'^{-1} L\rVert_F^2 - k
     + \lVert L'^{-1}(\mu - \mu')\rVert^2\Big) + \sum_i \log\frac{|L'_{ii}|}{|L_{ii}|}

  As for :func:`gaussian_kl_divergence`, the first pair of arguments is the
  first distribution inside the KL. On diagonal factors it equals
  ``gaussian_kl_divergence(mean, 2 log|diag L|, ...)`` to rounding.

  Args:
    mean: ``[..., k]`` means of the first distribution.
    scale_tril: ``[..., k, k]`` lower-triangular scale (Cholesky factor of the
      covariance); entries above the diagonal are ignored; the diagonal must
      be non-zero (either sign).
    target_mean: ``[..., k]`` means of the second distribution.
    target_scale_tril: ``[..., k, k]`` its lower-triangular scale.
    Leading (batch) dimensions broadcast.

  Returns:
    ``[...]`` divergences, float32 (float64 for float64 input).

  Numerics:
    Two triangular solves, no inverse and no determinant. With
    ``M = L'^{-1} L`` the sum is split into non-negative parts: the diagonal
    ``M_ii² − 1 − 2 log|M_ii|`` as ``expm1(2s) − 2s`` with
    ``s_i = log(|L_ii| / |L'_ii|)`` taken through ``log1p`` for nearby
    factors (so the log-determinant never cancels against the trace), the
    strictly lower part of ``M`` solved from ``L − L'`` (zero when the
    factors agree, not rounding noise), and the Mahalanobis term. Nearly
    equal distributions keep float32 relative accuracy (1.2e-7 measured at
    differences of 1e-6 with k = 3, where the trace − k + log-det form that
    distrax uses is off by a factor of 1e4).

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> L = jnp.array([[1.0, 0.0], [0.5, 1.0]])
    >>> kl = jaxdiv.multivariate_normal_kl_divergence(jnp.zeros(2), L, jnp.zeros(2), jnp.eye(2))
    >>> print(f"{kl:.4f}")  # ½ tr(L Lᵀ) - 1 - log|det L| = ½·2.25 - 1
    0.1250
  """
  m1, l1, m2, l2 = _mvn_pair(mean, scale_tril, target_mean, target_scale_tril)
  diag = lambda x: jnp.abs(jnp.diagonal(x, axis1=-2, axis2=-1))
  s = log_ratio(diag(l1), diag(l2))
  diag_terms = 0.5 * jnp.sum(_series.phi(2 * s), axis=-1)
  # Strictly lower part of L'⁻¹L = I + L'⁻¹(L − L'): exact zero for equal factors.
  off = jnp.tril(solve_triangular(l2, l1 - l2, lower=True), k=-1)
  off_terms = 0.5 * jnp.sum(jnp.square(off), axis=(-2, -1))
  return diag_terms + off_terms + _mahalanobis_term(m1, m2, l2)


def multivariate_normal_cross_entropy(
    mean: ArrayLike,
    scale_tril: ArrayLike,
    target_mean: ArrayLike,
    target_scale_tril: ArrayLike,
) -> jax.Array:
  r"""Cross-entropy H(p, q) = −E_p[log q] of p = N(mean, L Lᵀ), q = N(target_mean, L' L'ᵀ).

  .. math:: H(p, q) = \tfrac{k}{2}\log 2\pi + \sum_i \log|L'_{ii}|
     + \tfrac12\lVert L'^{-1} L\rVert_F^2 + \tfrac12\lVert L'^{-1}(\mu - \mu')\rVert^2

  ``multivariate_normal_kl_divergence + multivariate_normal_entropy`` in
  value, from the same solves, but summed directly (that sum cancels when the
  entropy is negative). The argument order and the factors' conventions are
  those of :func:`multivariate_normal_kl_divergence`.

  Args:
    mean: ``[..., k]`` means of ``p``, the distribution the expectation is under.
    scale_tril: ``[..., k, k]`` its lower-triangular scale (entries above the
      diagonal ignored; non-zero diagonal of either sign).
    target_mean: ``[..., k]`` means of ``q``.
    target_scale_tril: ``[..., k, k]`` its lower-triangular scale.
    Leading (batch) dimensions broadcast.

  Returns:
    ``[...]`` cross-entropies, float32 (float64 for float64 input).

  Numerics:
    Two triangular solves, no inverse and no determinant (the log-determinant
    is ``Σ log|L'_ii|``); every term but ``k/2 log 2π + Σ log|L'_ii|`` is
    non-negative. Matches 40-digit arithmetic to ~1e-15 relative in float64.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> h = jaxdiv.multivariate_normal_cross_entropy(jnp.zeros(2), jnp.eye(2), jnp.ones(2), 2 * jnp.eye(2))
    >>> print(f"{h:.4f}")  # log 2π + 2 log 2 + ½·(2/4) + ½·(2/4)
    3.7242
  """
  m1, l1, m2, l2 = _mvn_pair(mean, scale_tril, target_mean, target_scale_tril)
  k = m1.shape[-1]
  log_det = jnp.sum(_log_abs_diagonal(l2), axis=-1)
  trace = 0.5 * jnp.sum(jnp.square(solve_triangular(l2, l1, lower=True)), axis=(-2, -1))
  return (0.5 * k * LOG_2PI + log_det) + (trace + _mahalanobis_term(m1, m2, l2))


def multivariate_normal_entropy(scale_tril: ArrayLike) -> jax.Array:
  r"""Differential entropy of N(μ, L Lᵀ) from its Cholesky factor, in nats.

  .. math:: H = \tfrac{k}{2}\,(1 + \log 2\pi) + \sum_i \log|L_{ii}|

  Args:
    scale_tril: ``[..., k, k]`` lower-triangular scale; only its diagonal is read.

  Returns:
    ``[...]`` entropies, float32 (float64 for float64 input).

  Numerics:
    The log-determinant is the sum of ``log|L_ii|``: no determinant is formed,
    so it neither overflows nor underflows for large ``k``.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> h = jaxdiv.multivariate_normal_entropy(2.0 * jnp.eye(3))
    >>> print(f"{h:.4f}")  # 3·½(1 + log 2π) + 3 log 2
    6.3362
  """
  tril = v.as_floating("scale_tril", scale_tril)
  if tril.ndim < 2 or tril.shape[-1] != tril.shape[-2]:
    raise ValueError(f"scale_tril must have shape [..., k, k]; got {list(tril.shape)}.")
  (tril,) = v.to_compute(tril)
  return tril.shape[-1] * HALF_LOG_2PI_E + jnp.sum(_log_abs_diagonal(tril), axis=-1)
