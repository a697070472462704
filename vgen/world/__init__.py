"""The built-in shapes world: prompt grammar, renderer, verifier and datasets."""

from vgen.world.grammar import Count, Exists, Relation, Spec, all_prompts, parse, sample_prompts, split_prompts
from vgen.world.scene import Obj, Scene, condition_maps, render, render_prompt, sample_scene
from vgen.world.verifier import Detection, Verdict, detect, scores, verify
from vgen.world.vocab import CATEGORIES, COLORS, SHAPES

__all__ = [
    "CATEGORIES", "COLORS", "SHAPES", "Count", "Detection", "Exists", "Obj", "Relation", "Scene", "Spec",
    "Verdict", "all_prompts", "condition_maps", "detect", "parse", "render", "render_prompt", "sample_prompts",
    "sample_scene", "scores", "split_prompts", "verify",
]
