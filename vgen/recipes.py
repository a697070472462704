"""The jobs `vgen train` and `vgen bench` can run: name -> (module, config class, run function).

Modules are imported only when their job runs, so `vgen --help` and config errors stay fast.
A job's ``run(cfg, run_dir) -> int`` returns the process exit code.
"""

from __future__ import annotations

import importlib

# Training recipes arrive with their issues (Sol-RL, VAR, SAR, VARiant, ScaleWeaver).
TRAIN: dict[str, tuple[str, str]] = {
    "solrl": ("vgen.solrl.recipe", "SolRLConfig"),
    "solrl_var": ("vgen.solrl.var_recipe", "SolRLVARConfig"),
    "var": ("vgen.vartrain.recipe", "VARTrainConfig"),
    "sar": ("vgen.sar.recipe", "SARConfig"),
    "variant": ("vgen.variant.recipe", "VariantConfig"),
    "scaleweaver": ("vgen.scaleweaver.recipe", "ScaleWeaverConfig"),
}
# What each not-yet-landed recipe name will be, so a user gets a plain answer.
PLANNED: dict[str, str] = {}
BENCH: dict[str, tuple[str, str]] = {
    "world": ("vgen.bench.world", "WorldBenchConfig"),
    "rollout": ("vgen.bench.rollout", "RolloutBenchConfig"),
    "explore": ("vgen.bench.explore", "ExploreBenchConfig"),
    "fidelity": ("vgen.bench.fidelity", "FidelityBenchConfig"),
    "quant": ("vgen.bench.quant", "QuantBenchConfig"),
    "var": ("vgen.bench.var", "VARBenchConfig"),
    "sar": ("vgen.bench.sar", "SARBenchConfig"),
    "control": ("vgen.bench.control", "ControlBenchConfig"),
}


def resolve(table: dict[str, tuple[str, str]], name: str):
    """(config class, run function, recipe name) of a registered job."""
    module_name, cls_name = table[name]
    module = importlib.import_module(module_name)
    return getattr(module, cls_name), module.run, module.RECIPE
