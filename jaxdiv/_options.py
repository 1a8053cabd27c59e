"""The one options layer: every loss option is checked here, with one wording and one verdict.

Options that select a formula (label smoothing, z-loss, soft cap, temperature,
the divergence) must be concrete Python values: they are read at trace time,
so a bad one is reported before anything runs, naming the argument, what was
expected and what was passed. The materialised, fused and vocab-parallel losses
all call the same checks, so ``label_smoothing=2`` reads the same everywhere.

:class:`CEConfig` carries the cross-entropy options to the one definition of the
loss in :mod:`jaxdiv._core`; :func:`divergence` resolves the one vocabulary of
divergences (``"forward_kl" | "reverse_kl" | "jsd"``) and the JSD's ``β``
endpoints once.
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Any, Literal, NamedTuple, cast

import jax
import numpy as np

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
Smoothing = Literal["uniform", "t5x"]
_DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
_OLD_DIVERGENCES = {"kl": "forward_kl"}


def _interval(low: float, high: float | None, open_low: bool) -> str:
  return f"{'(' if open_low else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"


def scalar(name: str, value: Any, low: float, high: float | None = None, *, open_low: bool = False) -> float:
  """``value`` as a concrete, finite Python float in ``[low, high]`` (``(low, ...`` with ``open_low``).

  Raises:
    TypeError: if ``value`` is not a concrete number (a tracer, an array).
    ValueError: if it is NaN, infinite or outside the interval.
  """
  bounds = _interval(low, high, open_low)
  if isinstance(value, bool):
    raise TypeError(f"{name} must be a concrete Python float in {bounds}; got {value!r}.")
  try:
    x = float(value)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise TypeError(f"{name} must be a concrete Python float in {bounds}; got {value!r}.") from e
  if not math.isfinite(x) or (x <= low if open_low else x < low) or (high is not None and x > high):
    raise ValueError(f"{name} must lie in {bounds}; got {x}.")
  return x


def choice(name: str, value: Any, choices: tuple) -> None:
  """Checks that ``value`` is one of ``choices``."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}.")


def ignore_index(value: Any) -> int | None:
  """``ignore_index`` as a Python int (NumPy and JAX integer scalars included) or None."""
  if value is None:
    return None
  if isinstance(value, bool):
    raise TypeError(f"ignore_index must be None or an int (torch uses -100); got {value!r}.")
  try:
    return operator.index(value)
  except TypeError as e:
    raise TypeError(f"ignore_index must be None or an int (torch uses -100); got {value!r}.") from e


def soft_cap(value: Any) -> float | None:
  """``soft_cap``: None (no capping) or a finite float ``c > 0``."""
  return None if value is None else scalar("soft_cap", value, 0.0, open_low=True)


def temperature(value: Any) -> float:
  """``temperature``: a finite float ``T > 0``."""
  return scalar("temperature", value, 0.0, open_low=True)


def block(name: str, value: Any) -> int | None:
  """A block size: None (the default) or a positive int."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int or None; got {value!r}.")
  return value


def divergence(value: Any, beta: Any = 0.5) -> tuple[Divergence, float]:
  """``(divergence, β)`` resolved once: the one vocabulary and the JSD's endpoints.

  ``"kl"`` is the old spelling of ``"forward_kl"`` (a ``DeprecationWarning``).
  ``β`` must lie in ``[0, 1]`` whatever the divergence; ``"jsd"`` at ``β = 0``
  is the forward KL and at ``β = 1`` the reverse KL (the normalised limits).
  """
  if isinstance(value, str) and value in _OLD_DIVERGENCES:
    new = _OLD_DIVERGENCES[value]
    warnings.warn(f"divergence={value!r} is deprecated; use divergence={new!r}.", DeprecationWarning,
                  stacklevel=3)
    value = new
  choice("divergence", value, _DIVERGENCES)
  b = scalar("beta", beta, 0.0, 1.0)
  if value == "jsd" and b == 0.0:
    return "forward_kl", b
  if value == "jsd" and b == 1.0:
    return "reverse_kl", b
  return cast(Divergence, value), b


def flag(name: str, value: Any) -> bool:
  """A static switch: a Python (or NumPy) bool, never a traced array."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a Python bool; got {value!r}.")
  return bool(value)


def reverse_flag(reverse: Any, divergence_: Any) -> Any:
  """The old ``reverse=True`` switch as ``divergence="reverse_kl"`` (a ``DeprecationWarning``)."""
  if reverse is None:
    return divergence_
  warnings.warn("reverse= is deprecated; use divergence='reverse_kl' (or 'forward_kl').", DeprecationWarning,
                stacklevel=3)
  if not isinstance(reverse, bool):
    raise TypeError(f"reverse must be a bool; got {reverse!r}.")
  return "reverse_kl" if reverse else "forward_kl"


class CEConfig(NamedTuple):
  """Static cross-entropy options, checked (hashable: a ``nondiff_argnum`` of the fused cores)."""

  label_smoothing: float = 0.0
  smoothing: Smoothing = "uniform"
  t5x_normalize: bool = False
  z_loss: float = 0.0
  soft_cap: float | None = None


def ce_config(
    label_smoothing: Any = 0.0,
    smoothing: Any = "uniform",
    t5x_normalize: Any = False,
    z_loss: Any = 0.0,
    soft_cap_: Any = None,
) -> CEConfig:
  """The cross-entropy options, each checked: ``ε`` in ``[0, 1]``, ``λ ≥ 0``, ``c > 0``, the smoothing."""
  eps = scalar("label_smoothing", label_smoothing, 0.0, 1.0)
  lam = scalar("z_loss", z_loss, 0.0)
  choice("smoothing", smoothing, ("uniform", "t5x"))
  if not isinstance(t5x_normalize, bool):
    raise TypeError(f"t5x_normalize must be a bool; got {t5x_normalize!r}.")
  if t5x_normalize and smoothing != "t5x":
    raise ValueError("t5x_normalize=True needs smoothing='t5x'; got smoothing='uniform'.")
  return CEConfig(eps, smoothing, t5x_normalize, lam, soft_cap(soft_cap_))
