"""fcn-jax: Fully Convolutional Networks (Long, Shelhamer & Darrell) in JAX/Flax."""
