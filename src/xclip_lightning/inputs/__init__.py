"""What the model reads, shared by the data pipeline and the model: captions to token ids (``tokenize``) and
frames to normalised tensors (``transforms``). Depends on neither ``data`` nor ``model``, so both depend on it."""
