"""The generation loop against the official `WanS2V.generate` (wan/speech2video.py).

Both loops drive the same tiny models (our transformer, VAE and text encoder behind adapters with
the official call signatures; the official AudioEncoder on the same wav2vec2 folder), so any
difference comes from the loop itself: sizes, per-clip seeds and noise, guidance, the sampler,
motion chaining, decoding and trimming. Needs WAN_REFERENCE_REPO; skips without it.

torchvision and decord are not installed here: the official file imports them at the top, so
stand-ins are registered. Its portrait preprocessing (torchvision Resize + CenterCrop) is thus
replaced by ours, and that step is not what this test compares.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

from model.wan_common.frames import fit_portrait
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE
from model.wan_s2v.config import (
    DROP_FIRST_MOTION,
    FPS,
    GUIDANCE_SCALE,
    MOTION_FRAMES,
    NEGATIVE_PROMPT,
    SAMPLE_SHIFT,
    SAMPLE_STEPS,
)
from model.wan_s2v.pipeline import SamplingSettings, WanS2VPipeline
from model.wan_s2v.sizing import output_size
from model.wan_s2v.speech import SpeechEncoder
from tests.test_wan_pipeline import FAST_VAE, tiny_transformer
from tests.wan_reference import reference_module, requires_reference
from tests.wan_tiny_models import (
    TINY_TEXT_LEN,
    speech_samples,
    tiny_umt5,
    well_conditioned_vae,
    write_tiny_tokenizer,
    write_tiny_wav2vec2,
)

pytestmark = requires_reference

SECONDS = 6.3
MAX_AREA = 64 * 64
STEPS = 2
SEED = 21


class OfficialVAE:
    """Our VAE with `Wan2_1_VAE`'s interface: lists of per-video tensors."""

    def __init__(self, vae: WanVideoVAE) -> None:
        self.vae, self.dtype, self.device = vae, torch.float32, torch.device("cpu")

    def encode(self, videos):
        return [self.vae.encode(video[None])[0] for video in videos]

    def decode(self, latents):
        return [self.vae.decode(latent[None])[0].clamp(-1, 1) for latent in latents]


class OfficialTextEncoder:
    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder, self.model = encoder, encoder.model

    def __call__(self, prompts, device):
        return list(self.encoder.encode(prompts))


class OfficialNoiseModel:
    """Our transformer called the way `WanModel_S2V` is."""

    def __init__(self, transformer) -> None:
        self.transformer = transformer

    def __call__(self, x, t, context, seq_len, cond_states, motion_latents, ref_latents, audio_input,
                 motion_frames, drop_motion_frames):
        output = self.transformer(
            torch.stack(x), timestep=t, encoder_hidden_states=torch.stack(context), ref_latents=ref_latents,
            motion_latents=motion_latents, audio_features=audio_input, pose_latents=cond_states,
            motion_frames=tuple(motion_frames), drop_motion_frames=drop_motion_frames,
        )
        return list(output)


def stand_in_modules(speech_by_path: dict) -> dict[str, types.ModuleType]:
    def resize_and_crop_stand_in(size):
        return lambda image: image

    class CenterCrop:
        def __init__(self, size):
            self.height, self.width = size

        def __call__(self, image):
            return Image.fromarray(fit_portrait(np.asarray(image), self.height, self.width))

    transforms = types.ModuleType("torchvision.transforms")
    transforms.Resize = resize_and_crop_stand_in
    transforms.CenterCrop = CenterCrop
    transforms.ToTensor = lambda: (lambda image: torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0)
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    functional = types.ModuleType("torchvision.transforms.functional")
    decord = types.ModuleType("decord")
    decord.VideoReader = None
    librosa = types.ModuleType("librosa")
    librosa.load = lambda path, sr: (speech_by_path[str(path)], sr)
    return {"torchvision": torchvision, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional, "decord": decord, "librosa": librosa}


def test_our_loop_makes_the_official_loops_video(tmp_path, monkeypatch, one_cpu_thread):
    speech = speech_samples(SECONDS, seed=3)
    speech_path = str(tmp_path / "speech.wav")
    stand_ins = stand_in_modules({speech_path: speech})
    for name, module in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")  # t5.py evaluates it at import
    official = reference_module("speech2video")
    config = reference_module("configs.wan_s2v_14B").s2v_14B
    audio_encoder_module = reference_module("modules.s2v.audio_encoder")
    # Another test may have loaded audio_encoder.py first, with a librosa of its own.
    monkeypatch.setattr(audio_encoder_module, "librosa", stand_ins["librosa"])

    wav2vec = write_tiny_wav2vec2(tmp_path / "w2v")
    transformer, vae = tiny_transformer(), WanVideoVAE(well_conditioned_vae(FAST_VAE))
    text = TextEncoder(tiny_umt5(), AutoTokenizer.from_pretrained(write_tiny_tokenizer(tmp_path / "tok")),
                       text_len=TINY_TEXT_LEN)
    image = np.random.default_rng(5).integers(0, 256, size=(90, 80, 3), dtype=np.uint8)
    image_path = tmp_path / "portrait.png"
    Image.fromarray(image).save(image_path)

    reference = object.__new__(official.WanS2V)
    reference.__dict__.update(
        device=torch.device("cpu"), rank=0, t5_cpu=False, init_on_cpu=False, num_train_timesteps=1000,
        param_dtype=torch.float32, text_encoder=OfficialTextEncoder(text), vae=OfficialVAE(vae),
        noise_model=OfficialNoiseModel(transformer),
        audio_encoder=audio_encoder_module.AudioEncoder(model_id=str(wav2vec)),
        # what the official __init__ sets from its config, read from the checkout's config
        sample_neg_prompt=config.sample_neg_prompt, motion_frames=config.transformer.motion_frames,
        drop_first_motion=config.drop_first_motion, fps=config.sample_fps, audio_sample_m=0,
    )
    with torch.no_grad():
        expected = reference.generate(
            "a person speaking", str(image_path), speech_path, enable_tts=False, tts_prompt_audio=None,
            tts_prompt_text=None, tts_text=None, num_repeat=None, pose_video=None, max_area=MAX_AREA,
            infer_frames=80, shift=config.sample_shift, sample_solver="unipc", sampling_steps=STEPS,
            guide_scale=config.sample_guide_scale,
            n_prompt="", seed=SEED, offload_model=False,
        )

    components = types.SimpleNamespace(transformer=transformer, vae=vae, text_encoder=text,
                                       speech_encoder=SpeechEncoder.from_pretrained(wav2vec))
    pipeline = WanS2VPipeline(components, torch.device("cpu"), torch.float32)
    height, width = output_size(*image.shape[:2], MAX_AREA)
    ours = torch.cat(list(pipeline.generate_pixels(
        pipeline.encode_portrait(image, height, width), speech, SEED, "a person speaking",
        SamplingSettings(num_steps=STEPS), lambda *_: None,
    )), dim=2)[0]

    assert ours.shape == (3, round(SECONDS * config.sample_fps), height, width)
    assert expected.shape[1] >= ours.shape[1]  # the official loop does not trim to the speech
    # Compared in float: the sampler and the speech features match the official ones to ~1e-6.
    difference = (ours - expected[:, : ours.shape[1]]).abs().max() / expected.abs().max()
    assert difference <= 1e-4, difference


def test_our_quality_mode_constants_are_the_official_configs():
    """The constants our quality mode shares with the official release, against its own config."""
    config = reference_module("configs.wan_s2v_14B").s2v_14B
    ours = {"fps": FPS, "motion frames": MOTION_FRAMES, "drop first motion": DROP_FIRST_MOTION,
            "shift": SAMPLE_SHIFT, "steps": SAMPLE_STEPS, "guidance": GUIDANCE_SCALE,
            "negative prompt": NEGATIVE_PROMPT}
    official = {"fps": config.sample_fps, "motion frames": config.transformer.motion_frames,
                "drop first motion": config.drop_first_motion, "shift": config.sample_shift,
                "steps": config.sample_steps, "guidance": config.sample_guide_scale,
                "negative prompt": config.sample_neg_prompt}
    assert ours == official
