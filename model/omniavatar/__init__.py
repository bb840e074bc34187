"""OmniAvatar (Omni-Avatar/OmniAvatar): Wan2.1-T2V with a LoRA and pixel-wise audio embeddings.

`MODEL_BACKEND=omniavatar` (declaration.py, backend.py); its model parts (constants, speech
features, the audio pack, the transformer, the LoRA merge, the sampler, the chunk loop) are each
compared with the reference by tests/test_omniavatar_*.py.
"""
