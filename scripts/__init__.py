"""Command-line tools for the worker: demo, benchmarks, model download, image and endpoint set-up."""
