"""OmniAvatar (Omni-Avatar/OmniAvatar): Wan2.1-T2V with a LoRA and pixel-wise audio embeddings.

Not registered as a backend yet: this package holds its model parts (constants, speech features,
the audio pack and the transformer), each compared with the reference by tests/test_omniavatar_*.py.
"""
