"""Shared test utilities (tiny models, Hugging Face fixtures)."""
