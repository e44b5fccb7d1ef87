"""Data: tokenization in the official layout, and (coming) the PyAV sampler, readers, cache and DataModule."""
