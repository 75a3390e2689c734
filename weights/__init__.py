"""The checkpoints shipped with agn (package data `agn_cli.weights` when installed); see README.md here."""
