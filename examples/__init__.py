"""Runnable apps from the tutorial: ``python -m trio_channels run examples.<step>.routing``."""
