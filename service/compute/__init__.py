"""Pure torch: per-latent statistics and directed masked cosine scores. Never imports the db."""
