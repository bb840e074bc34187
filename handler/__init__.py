"""The RunPod serverless worker: `python -m handler`."""
