"""The bundled sample job (a public-domain portrait and an espeak-ng sentence), as a job input."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SAMPLE_PORTRAIT = ASSETS / "portrait.jpg"
SAMPLE_SPEECH = ASSETS / "speech.wav"


def sample_job_input(**overrides: Any) -> dict[str, Any]:
    job_input = {
        "image_file": base64.b64encode(SAMPLE_PORTRAIT.read_bytes()).decode("ascii"),
        "audio_file": base64.b64encode(SAMPLE_SPEECH.read_bytes()).decode("ascii"),
        "prompt": "A person speaking to the camera",
        "resolution": "512*512",
        "seed": 42,
        "output_type": "base64",
    }
    job_input.update(overrides)
    return job_input


if __name__ == "__main__":
    # `python -m handler.sample > test_input.json` regenerates RunPod's local test job.
    print(json.dumps({"input": sample_job_input()}))
