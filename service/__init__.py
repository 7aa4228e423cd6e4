"""latent-trees: how the latents of sparse autoencoders split as the dictionary grows."""

__version__ = "0.1.0"
