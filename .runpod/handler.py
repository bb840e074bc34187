"""The RunPod Hub's entry point: the Hub's checklist looks for a handler.py in .runpod/ or the root.

The worker itself is the `handler` package at the repository's root, which the image runs as
`python -m handler` (the Dockerfile's CMD); this file runs the same worker, RunPod's flags included
(`python .runpod/handler.py --test_input '{"input": {...}}'`). It lives here because a handler.py
at the root would sit beside the package of the same name.
"""

import sys
from pathlib import Path

# The repository's root first, so that `handler` is the package and not this file.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handler.__main__ import main  # starts runpod.serverless with the worker's handler

if __name__ == "__main__":
    main()
