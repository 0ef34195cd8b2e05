"""Generator (motion module + G_I) and the image/video discriminators, built from a ModelConfig."""
from dataclasses import dataclass

import torch
from torch import nn

from hgan.model_kinds import MODELS
from hgan.models.config import ModelConfig, resolution_plan
from hgan.models.generator import VideoGenerator
from hgan.models.networks import ImageDiscriminator, ImageGenerator, VideoDiscriminator


def _dcgan_init(module):
    # DCGAN's N(0, 0.02) conv weights and N(1, 0.02) BatchNorm scales. Neither the official
    # HGAN code nor the MoCoGAN code does this (they keep torch's defaults): docs/training.md.
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@dataclass
class Models:
    config: ModelConfig
    generator: VideoGenerator
    image_disc: ImageDiscriminator
    video_disc: VideoDiscriminator

    def to(self, device):
        for m in (self.generator, self.image_disc, self.video_disc):
            m.to(device)
        return self


def build_models(cfg: ModelConfig, device="cpu") -> Models:
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    g = VideoGenerator(cfg)
    d_i = ImageDiscriminator(cfg.resolution, cfg.ndf, cfg.channels)
    d_v = VideoDiscriminator(cfg.resolution, cfg.ndf, cfg.channels, cfg.clip_frames)
    g.image_generator.apply(_dcgan_init)
    d_i.apply(_dcgan_init)
    d_v.apply(_dcgan_init)
    models = Models(cfg, g, d_i, d_v).to(torch.device(device))
    if cfg.channels_last:
        g.image_generator.to(memory_format=torch.channels_last)
        d_i.to(memory_format=torch.channels_last)
        # Videos are stored B, T, H, W, C (G_I's channels-last output, reshaped), so D_V's
        # [N, C, T, H, W] view of a clip is channels_last_3d: matching weights avoid copies.
        d_v.to(memory_format=torch.channels_last_3d)
    return models


__all__ = ["MODELS", "ModelConfig", "Models", "build_models", "resolution_plan", "VideoGenerator",
           "ImageGenerator", "ImageDiscriminator", "VideoDiscriminator"]
