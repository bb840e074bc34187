"""InfiniteTalk (MeiGen-AI): Wan2.1-I2V-14B with audio cross-attention, one or two speakers.

Its model parts so far: constants (config.py), speech features (speech.py), the transformer with
its audio modules (transformer.py, audio_projection.py, speaker_attention.py) and the published
layout's conversion (convert_transformer.py), the sampler's arithmetic (sampling.py), the frame
layout (layout.py), one clip's denoising and the chaining of clips (pipeline.py) and the colour
correction between clips (colour.py). Not yet a backend: it is not in model/registry.py until its
declaration, weights and docs are there.
"""
