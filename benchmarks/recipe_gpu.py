"""Run a recipe on the GPU machine and bring back its report and models (one call of the device tool).

    python benchmarks/recipe_gpu.py examples/recipe_demo.yaml --data .carry/scifact --out $OUT

The recipe's SciFact paths are pointed at --data, its work folder at --workdir; at the end the report
(recipe_report.md, the stage records as one JSON) and the named model folders, cast to bfloat16 and
packed as .tar.gz, are written to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def to_bf16(src: Path, dst: Path) -> None:
    """Copy a checkpoint folder with its float tensors cast to bfloat16 (config dtype updated)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(f).items()}
            save_file(state, dst / f.name, metadata={"format": "pt"})
        elif f.name == "config.json":
            cfg = json.loads(f.read_text())
            cfg["torch_dtype"] = "bfloat16"
            cfg.pop("dtype", None)
            (dst / f.name).write_text(json.dumps(cfg, indent=2) + "\n")
        elif f.is_file():
            shutil.copy2(f, dst / f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--data", required=True, help="the SciFact folder on this machine")
    ap.add_argument("--workdir", default="/tmp/recipe-work")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pack", default="merged.model:demo-embedding,rerank.model:demo-reranker",
                    help="STAGE.OUTPUT:NAME pairs of model folders to bring back")
    ap.add_argument("--skip", default="", help="comma-separated leaf stages to leave out (e.g. the ablation's)")
    ap.add_argument("--pack-only", action="store_true", help="pack what finished stages hold, run nothing")
    args = ap.parse_args()
    from qwen_embed.recipe import load_recipe, run

    raw = yaml.safe_load(Path(args.recipe).read_text())

    def fix(v: object) -> object:
        if isinstance(v, str) and v.endswith("beir/scifact"):
            return args.data
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    raw = fix(raw)
    raw["workdir"] = args.workdir
    skip = set(filter(None, args.skip.split(",")))
    raw["stages"] = [s for s in raw["stages"] if s["name"] not in skip]
    path = Path(args.workdir + ".yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if not args.pack_only:
        records = run(load_recipe(path))
        result = {"seconds": time.perf_counter() - t, "stages": [r.to_json() for r in records]}
        (out / "recipe_result.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "recipe_report.md").write_text((Path(args.workdir) / "recipe_report.md").read_text())
        print(json.dumps({r.name: (r.metric or {}).get("ndcg_at_10", r.stats.get("ndcg_at_10")) for r in records}))
    for item in args.pack.split(","):
        ref, name = item.split(":")
        stage, output = ref.split(".")
        record = Path(args.workdir) / stage / "stage.json"
        if not record.is_file() or (out / f"{name}.tar.gz").exists():
            continue
        folder = Path(args.workdir) / stage / str(json.loads(record.read_text())["outputs"][output])
        tmp = Path("/tmp") / name
        to_bf16(folder, tmp)
        with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(tmp, arcname=name)
        print(f"packed {folder} -> {name}.tar.gz")


if __name__ == "__main__":
    main()
