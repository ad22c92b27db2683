"""`qwen-embed recipe run|status RECIPE.yaml`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_recipe_run(args: argparse.Namespace) -> int:
    from .runner import run
    from .spec import load_recipe

    recipe = load_recipe(args.recipe)
    records = run(recipe, rerun=args.rerun or [])
    ran = sum(r.status == "ran" for r in records)
    print(f"recipe {recipe.name}: {ran} stage(s) ran, {len(records) - ran} skipped; report: "
          f"{recipe.workdir / 'recipe_report.md'}", file=sys.stderr)
    return 0


def cmd_recipe_status(args: argparse.Namespace) -> int:
    from .runner import status
    from .spec import load_recipe

    recipe = load_recipe(args.recipe)
    rows = status(recipe)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"recipe {recipe.name} (work folder {recipe.workdir})")
    for r in rows:
        extra = ""
        if r["state"] == "done":
            extra = f"  {r['seconds']:.1f} s"
            if r.get("metric") is not None:  # 0.0 too: an untrained model can score it
                extra += f", held-out nDCG@10 {r['metric']:.4f}"
        print(f"  {r['stage']:<16} {r['kind']:<13} {r['state']}{extra}")
    return 0


def register(sub: Any) -> None:
    """Add `recipe run` and `recipe status` to the qwen-embed command."""
    p = sub.add_parser("recipe", help="run the multi-stage training recipe (stage 1 -> mine -> stage 2 -> merge -> "
                       "eval) as one resumable job", description="Declarative, resumable multi-stage recipes.")
    rs = p.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    r = rs.add_parser("run", help="run every stage not done yet with the same settings",
                      description="Run RECIPE.yaml: finished stages with unchanged settings are skipped, an "
                      "interrupted stage resumes, a changed stage re-runs with everything after it.")
    r.add_argument("recipe", help="recipe YAML file (see examples/recipe_tiny.yaml)")
    r.add_argument("--rerun", action="append", metavar="STAGE",
                   help="run this stage (and the stages that use it) again even if done (repeatable)")
    r.set_defaults(func=cmd_recipe_run)
    s = rs.add_parser("status", help="which stages are done, changed, partial or still to do")
    s.add_argument("recipe", help="recipe YAML file")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_recipe_status)
