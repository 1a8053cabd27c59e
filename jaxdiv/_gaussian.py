"""Closed-form KL divergence and entropy of Gaussian distributions.

For generative models: a VAE's regulariser is KL(q(z|x) ‖ p(z)) between a
diagonal Gaussian posterior and the prior. Unlike the categorical losses, whose
target comes first inside the KL, here the **argument order is the KL order**:
``f(mean, log_var, target_mean, target_log_var)`` is KL(N(mean, var) ‖
N(target_mean, target_var)), i.e. the model (posterior) first, the target
(prior) second, as in distrax/TFP's ``p.kl_divergence(q)``.

Every divergence is a sum of non-negative terms written so that nearly equal
distributions keep their relative accuracy. With ``δ = log σ₁² − log σ₂²``
(twice the log-scale difference, exact from either parameterisation):

.. math:: \\mathrm{KL} = \\tfrac12\\,(e^{δ} - 1 - δ) + \\tfrac12\\,((μ_1 - μ_2)/σ_2)^2

where ``e^δ − 1 − δ`` comes from the kernel's ``expm1(δ) − δ`` series (full
relative precision at ``|δ| = 1e-6``, where the direct difference keeps only a
tenth of its digits in float32). KL is never formed as cross-entropy minus
entropy, which cancels catastrophically. Full covariances (Cholesky factors) are in
:mod:`jaxdiv._mvn`.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _series
from jaxdiv import _validation as v

Parameterization = Literal["log_var", "log_scale"]

HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))
LOG_2PI = math.log(2.0 * math.pi)


def _broadcast(**named: jax.Array) -> list[jax.Array]:
  """The arrays broadcast to one shape, or a ValueError listing every shape."""
  try:
    shape = jnp.broadcast_shapes(*(a.shape for a in named.values()))
  except ValueError:
    shapes = ", ".join(f"{k} {list(a.shape)}" for k, a in named.items())
    raise ValueError(f"the Gaussian parameters must broadcast to one shape; got {shapes}.") from None
  return [jnp.broadcast_to(a, shape) for a in named.values()]


def _log_var_gap(log_spread: jax.Array, target_log_spread: jax.Array, parameterization: str) -> jax.Array:
  """``δ = log σ₁² − log σ₂²`` (the difference first: exact for nearby values)."""
  gap = log_spread - target_log_spread
  return gap if parameterization == "log_var" else 2 * gap


def _check_parameterization(parameterization: str) -> None:
  if parameterization not in ("log_var", "log_scale"):
    raise ValueError(f"parameterization must be 'log_var' or 'log_scale'; got {parameterization!r}.")


def _reduce(terms: jax.Array, axis, where) -> jax.Array:
  axes = v.reduce_axes(axis, terms.ndim, "mean")
  mask = v.mask(where, terms.shape)
  if mask is not None:
    terms = jnp.where(mask, terms, 0)
  return jnp.sum(terms, axis=axes) if axes else terms


def _diag_inputs(mean, log_spread, target_mean, target_log_spread, parameterization, where):
  """The four parameters checked, broadcast, cast to the compute dtype, masked inputs zeroed."""
  _check_parameterization(parameterization)
  spread = parameterization
  arrays = {
      "mean": v.as_floating("mean", mean),
      spread: v.as_floating(spread, log_spread),
      "target_mean": v.as_floating("target_mean", target_mean),
      f"target_{spread}": v.as_floating(f"target_{spread}", target_log_spread),
  }
  m1, s1, m2, s2 = v.to_compute(*_broadcast(**arrays))
  mask = v.mask(where, m1.shape)
  if mask is not None:  # NaN in a masked entry must reach neither value nor gradient
    m1, s1, m2, s2 = (jnp.where(mask, a, 0) for a in (m1, s1, m2, s2))
  return m1, s1, m2, s2


def _standardized_gap(m1: jax.Array, m2: jax.Array, target_log_spread: jax.Array, parameterization: str):
  """``z = (μ₁ − μ₂)/σ₂``, and 0 (not ``0·inf = NaN``) for equal means when ``1/σ₂`` overflows.

  Where ``1/σ₂`` is representable this is the plain product, so every
  derivative (the Hessian ``1/σ₂²`` at equal means included) is exact. Beyond
  the dtype's range (``log σ₂² < −177`` in float32) the value is 0 for equal
  means and ``±inf`` otherwise, with zero derivatives.
  """
  half = 0.5 if parameterization == "log_var" else 1.0
  log_inv = -half * target_log_spread
  diff = m1 - m2
  overflow = log_inv > math.log(jnp.finfo(log_inv.dtype).max)
  inv = jnp.exp(jnp.where(overflow, 0, log_inv))
  beyond = jnp.where(diff == 0, 0, jnp.where(diff > 0, jnp.inf, -jnp.inf))
  return jnp.where(overflow, beyond, diff * inv)


def _diag_kl_terms(mean, log_spread, target_mean, target_log_spread, parameterization, where):
  """Per-dimension KL terms (before the reduction)."""
  m1, s1, m2, s2 = _diag_inputs(mean, log_spread, target_mean, target_log_spread, parameterization, where)
  gap = _log_var_gap(s1, s2, parameterization)
  # e^δ − 1 − δ overflows to +inf (the true value) only when δ > 88 in float32.
  var_term = 0.5 * _series.phi(gap)
  z = _standardized_gap(m1, m2, s2, parameterization)
  return var_term + 0.5 * jnp.square(z)


_DIAG_NUMERICS = """
  Numerics:
    Both terms are non-negative and computed without cancellation: for
    distributions whose log-scales and means differ by 1e-6 the float32 result
    keeps a relative error of 2e-7 (measured over 2000 random pairs against
    50-digit arithmetic), where ``var1/var2 - 1 - log(var1/var2)`` is off by
    25% and cross-entropy minus entropy by a factor of 1e5. Finite, with
    finite derivatives of every order, for log-variances in [-80, 80] against
    the standard normal and whenever the log-variance gap ``|δ| < 88``;
    beyond that the true value exceeds the float32 range and
    is ``+inf``, never NaN. ``where`` drops dimensions: a dropped entry
    contributes 0 with zero gradient, whatever it holds (NaN included).
"""


def gaussian_kl_divergence(
    mean: ArrayLike,
    log_var: ArrayLike,
    target_mean: ArrayLike,
    target_log_var: ArrayLike,
    *,
    parameterization: Parameterization = "log_var",
    axis: int | tuple[int, ...] | None = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""KL(N(mean, var) ‖ N(target_mean, target_var)) between diagonal Gaussians.

  .. math:: \mathrm{KL} = \sum_i \tfrac12\Big(e^{\delta_i} - 1 - \delta_i
     + \frac{(\mu_i - \mu'_i)^2}{\sigma'^2_i}\Big),
     \qquad \delta_i = \log\sigma_i^2 - \log\sigma'^2_i

  The first distribution *inside* the KL is the first pair of arguments (the
  model, e.g. a VAE posterior q(z|x)); the second is the target (e.g. a
  learned prior). This is the reverse of :func:`jaxdiv.kl_divergence`, whose
  target comes first inside the KL; here the order matches
  ``distrax``/TFP's ``q.kl_divergence(p)``.

  ``parameterization="log_scale"`` reads ``log_var`` and ``target_log_var`` as
  log standard deviations instead. A switch rather than a ``_log_scale`` twin:
  the two differ only by the exact factor 2 in ``δ`` and in ``1/σ'``, so they
  share every line of the numerics, and :func:`standard_normal_kl_divergence`
  and :func:`gaussian_entropy` take the same switch.

  Args:
    mean: means ``μ`` of the first distribution, ``[..., dim]``.
    log_var: log-variances ``log σ²`` (or log-scales ``log σ``), broadcastable
      with ``mean``.
    target_mean: means ``μ'`` of the second distribution, broadcastable.
    target_log_var: its log-variances (or log-scales), broadcastable.
    parameterization: ``"log_var"`` or ``"log_scale"``.
    axis: the event axes to sum over (an int or a tuple); None returns the
      per-dimension terms.
    where: optional boolean mask broadcastable to the parameters' shape;
      masked dimensions are left out of the sum.

  Returns:
    The broadcast shape without ``axis``, float32 (float64 for float64 input).
  {numerics}
  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> kl = jaxdiv.gaussian_kl_divergence(jnp.array([1.0, 0.0]), jnp.log(jnp.array([4.0, 1.0])),
    ...                                    jnp.zeros(2), jnp.zeros(2))
    >>> print(f"{kl:.4f}")  # ½(4 - 1 - log 4 + 1) + 0
    1.3069
  """
  terms = _diag_kl_terms(mean, log_var, target_mean, target_log_var, parameterization, where)
  return _reduce(terms, axis, where)


def standard_normal_kl_divergence(
    mean: ArrayLike,
    log_var: ArrayLike,
    *,
    parameterization: Parameterization = "log_var",
    axis: int | tuple[int, ...] | None = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""KL(N(mean, var) ‖ N(0, I)): the VAE regulariser against its standard-normal prior.

  .. math:: \mathrm{KL} = \sum_i \tfrac12\big(e^{\ell_i} - 1 - \ell_i + \mu_i^2\big),
     \qquad \ell_i = \log\sigma_i^2

  The same function as :func:`gaussian_kl_divergence` with a zero mean and a
  zero log-variance target.

  Args:
    mean: posterior means, ``[..., latent_dim]``.
    log_var: posterior log-variances (or log-scales, see ``parameterization``),
      broadcastable with ``mean``.
    parameterization: ``"log_var"`` or ``"log_scale"``.
    axis: the latent axes to sum over; None returns per-dimension terms.
    where: optional boolean mask broadcastable to ``mean.shape``.

  Returns:
    The broadcast shape without ``axis``, float32 (float64 for float64 input).
  {numerics}
  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> mean, log_var = jnp.array([[0.0, 0.0], [1.0, -1.0]]), jnp.zeros((2, 2))
    >>> jaxdiv.standard_normal_kl_divergence(mean, log_var)
    Array([0., 1.], dtype=float32)
  """
  m = v.as_floating("mean", mean)
  zero = jnp.zeros((), m.dtype)
  terms = _diag_kl_terms(m, log_var, zero, zero, parameterization, where)
  return _reduce(terms, axis, where)


def gaussian_entropy(
    log_var: ArrayLike,
    *,
    parameterization: Parameterization = "log_var",
    axis: int | tuple[int, ...] | None = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Differential entropy of a diagonal Gaussian, in nats.

  .. math:: H = \sum_i \tfrac12\big(1 + \log 2\pi + \log\sigma_i^2\big)

  It does not depend on the mean. Negative for small variances.

  Args:
    log_var: log-variances ``log σ²`` (or log-scales), ``[..., dim]``.
    parameterization: ``"log_var"`` or ``"log_scale"``.
    axis: the event axes to sum over; None returns per-dimension entropies.
    where: optional boolean mask broadcastable to ``log_var.shape``.

  Returns:
    ``log_var.shape`` without ``axis``, float32 (float64 for float64 input).

  Numerics:
    Linear in the log-variance: exact and finite for any finite input; a
    masked entry contributes 0 with zero gradient.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> h = jaxdiv.gaussian_entropy(jnp.zeros(3))   # N(0, I) in three dimensions
    >>> print(f"{h:.4f}")
    4.2568
  """
  _check_parameterization(parameterization)
  (s,) = v.to_compute(v.as_floating(parameterization, log_var))
  mask = v.mask(where, s.shape)
  if mask is not None:
    s = jnp.where(mask, s, 0)
  half_log_var = 0.5 * s if parameterization == "log_var" else s
  return _reduce(half_log_var + HALF_LOG_2PI_E, axis, where)


def gaussian_cross_entropy(
    mean: ArrayLike,
    log_var: ArrayLike,
    target_mean: ArrayLike,
    target_log_var: ArrayLike,
    *,
    parameterization: Parameterization = "log_var",
    axis: int | tuple[int, ...] | None = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy H(p, q) = −E_p[log q] of diagonal p = N(mean, var), q = N(target_mean, target_var).

  .. math:: H(p, q) = \sum_i \tfrac12\Big(\log 2\pi + \log\sigma'^2_i + e^{\delta_i}
     + \frac{(\mu_i - \mu'_i)^2}{\sigma'^2_i}\Big),
     \qquad \delta_i = \log\sigma_i^2 - \log\sigma'^2_i

  Equal to ``gaussian_kl_divergence(...) + gaussian_entropy(log_var)``, and
  made of the same terms (``e^δ``, the standardised mean gap), but summed
  directly: the KL + entropy sum cancels whenever the (differential) entropy
  is negative, e.g. for small variances. The argument order is that of
  :func:`gaussian_kl_divergence` (the expectation is under the first pair),
  as ``p.cross_entropy(q)`` in distrax/TFP.

  Args:
    mean: means ``μ`` of the first distribution ``p``, ``[..., dim]``.
    log_var: its log-variances ``log σ²`` (or log-scales), broadcastable.
    target_mean: means ``μ'`` of ``q``, broadcastable.
    target_log_var: its log-variances (or log-scales), broadcastable.
    parameterization: ``"log_var"`` or ``"log_scale"``.
    axis: the event axes to sum over; None returns per-dimension terms.
    where: optional boolean mask broadcastable to the parameters' shape.

  Returns:
    The broadcast shape without ``axis``, float32 (float64 for float64 input).

  Numerics:
    Three terms, ``log 2π + log σ'²`` (the only one that can be negative),
    ``e^δ`` and ``z²``, each to a few ulp; the sum cancels only where the
    cross-entropy itself is near 0, which no formula avoids. Equal means with
    a target variance below the float range give the finite value (not
    ``0·inf = NaN``). A masked entry contributes 0 with zero gradient.

  Examples:
    >>> import jax.numpy as jnp, jaxdiv
    >>> h = jaxdiv.gaussian_cross_entropy(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
    >>> print(f"{h:.4f}")  # = the entropy of N(0, I₂): 1 + log 2π
    2.8379
  """
  m1, s1, m2, s2 = _diag_inputs(mean, log_var, target_mean, target_log_var, parameterization, where)
  target_log_var_ = s2 if parameterization == "log_var" else 2 * s2
  z = _standardized_gap(m1, m2, s2, parameterization)
  ratio = jnp.exp(_log_var_gap(s1, s2, parameterization))
  terms = 0.5 * ((LOG_2PI + target_log_var_) + (ratio + jnp.square(z)))
  return _reduce(terms, axis, where)


for _f in (gaussian_kl_divergence, standard_normal_kl_divergence):
  _f.__doc__ = (_f.__doc__ or "").replace("{numerics}", _DIAG_NUMERICS.strip())
del _f
