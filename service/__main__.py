"""`python -m service` runs the latent-trees CLI."""

from service import cli

cli.main()
