"""fcn-jax: Fully Convolutional Networks (Long, Shelhamer & Darrell) in JAX/Flax.

Importing the package changes nothing in the process: programs that want fcn-jax's CPU
settings for XLA call `fcn_jax.xla_setup.add_default_xla_flags()` first (main.py and the
benchmarks do).
"""
