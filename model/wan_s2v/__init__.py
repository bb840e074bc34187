"""Wan2.2-S2V-14B (speech-to-video) on diffusers, transformers and safetensors."""
