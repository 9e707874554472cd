"""paint-app: paint SAE concepts onto the images of a diffusers UNet."""

__version__ = "0.1.0"
