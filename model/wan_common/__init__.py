"""What every Wan2.1-family backend shares: the Wan2.1 VAE and its streaming decoder, the umT5
text encoder, streamed checkpoint loading, memory modes and their placement, flow-matching
schedulers, the per-job LoRA adapter and frame helpers."""
