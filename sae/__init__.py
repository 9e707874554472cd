"""sae: train, evaluate, label and factor sparse autoencoders on diffusers UNet blocks."""

from .errors import SAEError
from .model import SAE, SAEConfig

__all__ = ["SAE", "SAEConfig", "SAEError"]
