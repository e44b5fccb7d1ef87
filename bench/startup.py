"""Start-up of the command line: how long each command takes to answer ``--help`` or an argument mistake (a new
process each time, as a user types it), next to the imports it can no longer wait for.

    .venv/bin/python bench/startup.py              # each command 5 times, the median

Rows: the bare interpreter; ``import torch``, ``import transformers``, ``import lightning`` (what a command paid
before arguments were parsed first); ``import xclip_lightning``; ``--help``; ``search / index / serve --help``; an
argument mistake (``search --top-k 0``, ``export`` of a missing checkpoint); ``fit --help`` the first time (built by
LightningCLI: imports everything) and from the cache it leaves. Target (issue 18): under 1 s for ``--help`` and for
a subcommand's ``--help``. Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
COMMAND = str(Path(PYTHON).with_name("xclip-lightning"))
ROWS = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "import torch": [PYTHON, "-c", "import torch"],
    "import transformers": [PYTHON, "-c", "import transformers"],
    "import lightning": [PYTHON, "-c", "import lightning"],
    "import xclip_lightning": [PYTHON, "-c", "import xclip_lightning"],
    "xclip-lightning --help": [COMMAND, "--help"],
    "search --help": [COMMAND, "search", "--help"],
    "index --help": [COMMAND, "index", "--help"],
    "serve --help": [COMMAND, "serve", "--help"],
    "search --top-k 0 (a mistake)": [COMMAND, "search", "--index", "x", "q", "--top-k", "0"],
    "export, missing checkpoint": [COMMAND, "export", "--ckpt-path", "missing.ckpt", "--out", "x"],
}


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, env=env, check=False)
    return time.perf_counter() - start


def main(repeats: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        results = {name: statistics.median(timed(c, env) for _ in range(repeats)) for name, c in ROWS.items()}
        results["fit --help, first time"] = timed([COMMAND, "fit", "--help"], env)  # builds and caches the help
        results["fit --help, cached"] = statistics.median(timed([COMMAND, "fit", "--help"], env) for _ in range(5))
    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:6.2f} s")
    print(json.dumps({"bench": "startup", **{k: round(v, 3) for k, v in results.items()}}))
    return results


if __name__ == "__main__":
    main()
