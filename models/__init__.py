"""Generative models, their losses, the registry and the one trainer."""
