"""fcn-jax: Fully Convolutional Networks (Long, Shelhamer & Darrell) in JAX/Flax."""

from fcn_jax import xla_setup

xla_setup.add_default_xla_flags()
