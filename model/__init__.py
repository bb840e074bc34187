"""Talking-head backends: the interface every model implements, and one sub-package per model."""
