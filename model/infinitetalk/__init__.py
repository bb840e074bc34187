"""InfiniteTalk (MeiGen-AI): Wan2.1-I2V-14B with audio cross-attention, one or two speakers.

Its model parts: constants (config.py), speech features (speech.py), the transformer with
its audio modules (transformer.py, audio_projection.py, speaker_attention.py) and the published
layout's conversion (convert_transformer.py), the sampler's arithmetic (sampling.py), the frame
layout (layout.py), one clip's denoising and the chaining of clips (pipeline.py) and the colour
correction between clips (colour.py); the backend: its declaration (declaration.py), job fields
(options.py), memory-mode figures (memory.py), loading from the published layouts (loader.py),
the fast mode's LoRA (lora.py) and the backend itself (backend.py), listed in model/registry.py.
"""
