"""Evaluation: distribution metrics (FID-shapes, KID-shapes, Inception FID from local weights)."""
