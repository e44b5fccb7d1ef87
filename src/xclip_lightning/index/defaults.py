"""The defaults of ``index`` and ``search`` shared by the command line and the Python API. Imports nothing heavy:
``--help`` shows them without loading torch."""

import os

DEFAULT_WINDOW = 30.0  # seconds per moment of a long video (README "Moments"); a clip under 45 s stays one moment
DEFAULT_BATCH_SIZE = 8  # moments encoded together
DEFAULT_WORKERS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
DEFAULT_CANDIDATES = 200  # videos re-scored with the full X-CLIP score per query (bench/search.py)
