"""jaxdiv: NaN-safe, log-space cross-entropy and KL divergences for JAX.

Every function takes the model's logits first and the target second, reduces
over the class ``axis`` and returns per-example values in float32 (float64 for
float64 input). See the README for the numerical contract.
"""

from jaxdiv._binary import (
    binary_cross_entropy,
    binary_entropy,
    binary_kl_divergence,
    binary_poly_loss,
    sigmoid_focal_loss,
)
from jaxdiv._categorical import (
    cross_entropy,
    entropy,
    soft_cross_entropy,
    soft_cross_entropy_with_log_targets,
)
from jaxdiv._distill import distillation_loss, top_k_kl_divergence
from jaxdiv._divergences import (
    jensen_shannon_divergence,
    kl_divergence,
    kl_divergence_with_log_targets,
    reverse_kl_divergence,
)
from jaxdiv._fused import fused_linear_cross_entropy
from jaxdiv._fused_distill import fused_linear_distillation
from jaxdiv._gaussian import (
    gaussian_cross_entropy,
    gaussian_entropy,
    gaussian_kl_divergence,
    standard_normal_kl_divergence,
)
from jaxdiv._mvn import (
    multivariate_normal_cross_entropy,
    multivariate_normal_entropy,
    multivariate_normal_kl_divergence,
)
from jaxdiv._rl import kl_estimator
from jaxdiv._sharded import (
    vocab_parallel_cross_entropy,
    vocab_parallel_jensen_shannon_divergence,
    vocab_parallel_kl_divergence,
)
from jaxdiv._sharded_fused import vocab_parallel_fused_linear_cross_entropy
from jaxdiv._validation import check_labels

__version__ = "0.1.0"

__all__ = [
    "binary_cross_entropy",
    "binary_entropy",
    "binary_kl_divergence",
    "binary_poly_loss",
    "check_labels",
    "cross_entropy",
    "distillation_loss",
    "entropy",
    "fused_linear_cross_entropy",
    "fused_linear_distillation",
    "gaussian_cross_entropy",
    "gaussian_entropy",
    "gaussian_kl_divergence",
    "jensen_shannon_divergence",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "kl_estimator",
    "multivariate_normal_cross_entropy",
    "multivariate_normal_entropy",
    "multivariate_normal_kl_divergence",
    "reverse_kl_divergence",
    "sigmoid_focal_loss",
    "soft_cross_entropy",
    "soft_cross_entropy_with_log_targets",
    "standard_normal_kl_divergence",
    "top_k_kl_divergence",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_fused_linear_cross_entropy",
    "vocab_parallel_jensen_shannon_divergence",
    "vocab_parallel_kl_divergence",
]
