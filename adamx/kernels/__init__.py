"""The optional compiled one-pass step (C++ through `jax.ffi`) and its dispatch; the jnp path is the
reference it is tested against. Nothing here is public API: `adamx.step` and `adamx.apply_updates`
reach it. Imports the floors below it.
"""

__all__: list[str] = []
