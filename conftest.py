"""Suite-wide settings: adamx's code must run under strict dtype and rank promotion.

Tests that call a reference library which is not strict-clean (optax, flax) relax it locally with
``tests.helpers.relaxed()`` around that call only.
"""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
