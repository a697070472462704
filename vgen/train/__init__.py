"""Shared trainer scaffolding: checkpoints, resume, run directories' contents."""
