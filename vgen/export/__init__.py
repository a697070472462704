"""Export a run or a model folder as a folder to hand on: weights in a standard format plus a model card."""

from vgen.export.exporter import FORMATS, export, read_source

__all__ = ["FORMATS", "export", "read_source"]
