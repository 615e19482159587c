"""Downstream applications of trained encoders and generators."""
