"""The multi-stage recipe as one declarative, resumable job (stage 1 -> mining -> stage 2 -> merge -> eval).

    from qwen_embed.recipe import load_recipe, run
    records = run(load_recipe("examples/recipe_tiny.yaml"))

See `spec.py` (the file format), `stages.py` (the stage kinds) and `runner.py` (skipping, resuming,
fingerprints, the report). The command is `qwen-embed recipe run|status RECIPE.yaml`.
"""

from .runner import StageRecord, run, stage_fingerprints, status
from .spec import Recipe, Stage, load_recipe

__all__ = ["Recipe", "Stage", "StageRecord", "load_recipe", "run", "stage_fingerprints", "status"]
