"""What every Wan2.1-family backend shares: the Wan2.1 VAE and its streaming decoder, the umT5
text encoder, streamed checkpoint loading, memory modes and their placement, flow-matching
schedulers, the per-job LoRA adapter, frame helpers, and for the Wan2.1 transformers (InfiniteTalk,
OmniAvatar) the scaffolding on diffusers' model (`wan21_transformer`), the official-to-diffusers
name conversion (`convert_wan21`), the CLIP image encoder (`clip_image`) and wav2vec2 run at the
video's frame rate (`wav2vec2_frames`)."""
