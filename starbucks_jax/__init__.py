"""2D Matryoshka sentence embeddings in JAX/Flax (README.md)."""

from starbucks_jax import platforms as _platforms

_platforms.choose()  # before jax starts: the CPU alone where there is no accelerator
