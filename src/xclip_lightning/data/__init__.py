"""Data: the PyAV frame sampler, CLIP preprocessing, tokenization in the official layout, the annotation readers,
the frame cache, the datasets and ``VideoTextDataModule``, and the synthetic dataset of the demo and the tests."""
