"""Search as a live service and as a page: ``xclip-lightning serve`` keeps the model and the index resident behind
an HTTP API and a search page (``app``), plays the indexed files in the browser or converts a moment that cannot be
played as it is (``media``), and writes the static page of ``search --html`` (``report``). Needs the ``serve``
extra (FastAPI, uvicorn) for the server only."""
