"""The toy model's diffusers/transformers parts: a small VAE (scale 4), a word-level CLIP text encoder, a UNet.

Images are 64x64 RGB, latents 4x16x16. The UNet has two levels, so its transformer blocks sit at a 16x16 grid
(down_blocks.0, up_blocks.1) and at 8x8 (down_blocks.1, mid_block, up_blocks.0).
"""

from __future__ import annotations

import torch

from sae.tokenizer import make_word_tokenizer

from .world import SIZE, vocabulary

MAX_TOKENS = 32
LATENT_SIZE = SIZE // 4
PREDICTION_TYPE = "v_prediction"


def make_tokenizer():
    return make_word_tokenizer(vocabulary(), model_max_length=MAX_TOKENS)


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=SIZE,
    )


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=64,
    )
    return CLIPTextModel(config)


TEXT_ENTRIES = ("all", "first", "middle")
# each transformer block's role, by where the UNet reads the caption: the block list of the app's profile
BLOCK_ROLES = {
    "all": {
        "down_blocks.0.attentions.0": "fine, early (16x16)",
        "down_blocks.1.attentions.0": "coarse, early (8x8)",
        "mid_block.attentions.0": "coarse (8x8)",
        "up_blocks.0.attentions.0": "coarse, late (8x8)",
        "up_blocks.0.attentions.1": "coarse, late (8x8)",
        "up_blocks.1.attentions.0": "fine, late (16x16)",
        "up_blocks.1.attentions.1": "fine, last (16x16)",
    },
    "first": {  # the only blocks that read the caption
        "down_blocks.0.attentions.0": "fine, early (16x16)",
        "down_blocks.0.attentions.1": "fine, early, the caption's last (16x16)",
    },
    "middle": {
        "mid_block.attentions.0": "coarse, the caption's only (8x8)",
        "up_blocks.1.attentions.0": "fine, late, text-free (16x16)",
        "up_blocks.1.attentions.1": "fine, last, text-free (16x16)",
    },
}


def make_unet(pooled_text: bool = True, text_entry: str = "all"):
    """The toy UNet. ``pooled_text`` also feeds the caption, pooled by attention, into the time embedding
    (diffusers' ``addition_embed_type="text"``), so every ResNet block sees it, not only the cross-attention
    layers: without it the shape words barely reached the layout (shape adherence 61% instead of 80%+).

    ``text_entry="all"``: cross-attention in every block. ``"first"``: the caption enters only through the two
    transformer blocks of the first (16x16) level, ``down_blocks.0.attentions.{0,1}``; the rest of the UNet is
    text-free (its middle keeps a self-attention), so what those blocks write is the model's only word on the
    caption. ``"middle"``: the caption enters only through the middle block (8x8, two transformer layers); the
    down path has no attention and the last level's two transformer blocks (16x16) keep self-attention but their
    cross-attention is zeroed and frozen (diffusers' cross-attention blocks insist on one), so the middle block's
    output is the only path from the caption to the image. Both are experiments in steerability (model card,
    PaintBench); the shipped weights use ``"all"``."""
    from diffusers import UNet2DConditionModel

    if text_entry not in TEXT_ENTRIES:
        raise ValueError(f"text_entry is {text_entry!r}; allowed: {', '.join(TEXT_ENTRIES)}")
    extra = {"addition_embed_type": "text", "addition_embed_type_num_heads": 4} if pooled_text else {}
    if text_entry == "first":
        layout = dict(layers_per_block=(2, 1), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      mid_block_type="UNetMidBlock2D", up_block_types=("UpBlock2D", "UpBlock2D"))
    elif text_entry == "middle":
        layout = dict(layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                      mid_block_type="UNetMidBlock2DCrossAttn", transformer_layers_per_block=(1, 2),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    else:
        layout = dict(layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        cross_attention_dim=64, attention_head_dim=(2, 4), norm_num_groups=8, **layout, **extra,
    )
    if text_entry == "middle":
        for cross in text_free_cross_attentions(unet):
            for param in cross.to_out.parameters():
                torch.nn.init.zeros_(param)
                param.requires_grad_(False)
    return unet


def text_entry_of(config) -> str:
    """Where a toy UNet reads the caption (``TEXT_ENTRIES``), from its diffusers config."""
    if not any("CrossAttn" in kind for kind in config.up_block_types):
        return "first"
    if not any("CrossAttn" in kind for kind in config.down_block_types):
        return "middle"
    return "all"


def text_free_cross_attentions(unet) -> list[torch.nn.Module]:
    """The cross-attentions of a ``"middle"`` UNet's last level, which must read nothing from the caption."""
    return [module for name, module in unet.named_modules()
            if name.startswith("up_blocks.1.attentions.") and name.endswith(".attn2")]


def make_scheduler():
    """Zero-terminal-SNR v-prediction with trailing spacing: good samples in a handful of steps."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=PREDICTION_TYPE, rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def make_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
