"""t5x_instruct: instruction tuning of T5- and Llama-style models in JAX / Flax NNX."""

__version__ = "0.1.0"
