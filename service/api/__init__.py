"""The JSON API and the viewer page of `latent-trees serve`."""
