"""Strict JAX configuration for the whole suite, and the transform fixture.

Eight simulated CPU devices (for shard_map tests), strict dtype promotion and
rank promotion errors: jaxdiv must never rely on implicit promotion.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
