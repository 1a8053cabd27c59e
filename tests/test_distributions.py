"""The KL/entropy registry of jaxdiv.distributions, with small stand-in classes (no distrax needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
import jaxdiv.distributions as jd


class _Coin:
  def __init__(self, logit):
    self.logit = jnp.asarray(logit)


class _BiasedCoin(_Coin):
  pass


class _Die:
  def __init__(self, logits):
    self.logits = jnp.asarray(logits)


@jd.register_kl(_Coin, _Coin)
def _kl_coin(p, q):
  return jaxdiv.binary_kl_divergence(q.logit, p.logit)


@jd.register_entropy(_Coin)
def _entropy_coin(p):
  return jaxdiv.binary_entropy(p.logit)


def test_importing_jaxdiv_does_not_import_distrax_or_tfp():
  code = ("import sys, jaxdiv, jaxdiv.distributions; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'distrax', 'tensorflow_probability'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
  assert out.stdout.strip() == "[]"


def test_registered_pair_dispatches_and_subclasses_inherit_it():
  p, q = _Coin(0.0), _BiasedCoin(2.0)
  want = jaxdiv.binary_kl_divergence(jnp.asarray(2.0), jnp.asarray(0.0))
  assert jd.kl_divergence(p, q) == want
  assert jd.kl_divergence(q, p) == jaxdiv.binary_kl_divergence(jnp.asarray(0.0), jnp.asarray(2.0))
  assert jd.entropy(q) == jaxdiv.binary_entropy(jnp.asarray(2.0))


def test_missing_pair_raises_not_implemented_naming_both_types():
  with pytest.raises(NotImplementedError, match="no KL divergence registered for KL\\(_Coin ‖ _Die\\)"):
    jd.kl_divergence(_Coin(0.0), _Die(jnp.zeros(3)))
  with pytest.raises(NotImplementedError, match="no entropy registered for _Die"):
    jd.entropy(_Die(jnp.zeros(3)))


def test_registering_a_pair_twice_raises():
  with pytest.raises(ValueError, match="KL\\(_Coin ‖ _Coin\\) is already registered"):
    jd.register_kl(_Coin, _Coin)(_kl_coin)


def test_dispatch_works_under_jit_vmap_and_grad():
  f = lambda a, b: jd.kl_divergence(_Coin(a), _Coin(b))
  a, b = jnp.asarray([0.5, -1.0]), jnp.asarray([2.0, 0.0])
  want = jaxdiv.binary_kl_divergence(b, a)
  np.testing.assert_allclose(jax.jit(f)(a, b), want, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(f)(a, b), want, rtol=1e-6)
  g = jax.grad(lambda a, b: jnp.sum(f(a, b)), argnums=(0, 1))(a, b)
  w = jax.grad(lambda a, b: jnp.sum(jaxdiv.binary_kl_divergence(b, a)), argnums=(0, 1))(a, b)
  for x, y in zip(g, w):
    np.testing.assert_allclose(x, y, rtol=1e-6)


@jd.register_cross_entropy(_Coin, _Coin)
def _cross_entropy_coin(p, q):
  return jaxdiv.binary_kl_divergence(q.logit, p.logit) + jaxdiv.binary_entropy(p.logit)


def test_cross_entropy_dispatches_and_names_both_types_when_missing():
  p, q = _Coin(0.5), _BiasedCoin(-1.0)
  want = jaxdiv.binary_cross_entropy(jnp.asarray(-1.0), jax.nn.sigmoid(jnp.asarray(0.5)))
  np.testing.assert_allclose(jd.cross_entropy(p, q), want, rtol=1e-6)
  with pytest.raises(NotImplementedError,
                     match="no cross-entropy registered for H\\(_Coin ‖ _Die\\); add one with "
                           "@jaxdiv.distributions.register_cross_entropy"):
    jd.cross_entropy(_Coin(0.0), _Die(jnp.zeros(3)))
  with pytest.raises(ValueError, match="H\\(_Coin ‖ _Coin\\) is already registered"):
    jd.register_cross_entropy(_Coin, _Coin)(_cross_entropy_coin)
