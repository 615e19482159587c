"""Metrics: robustness (accuracy under attack) for encoders."""
