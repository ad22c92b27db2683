"""Corpus embedding on one device against N devices (one worker process each), same corpus, one run.

    PYTHONPATH=src python benchmarks/multidevice.py --devices cuda:0,cuda:1        # issue 7: two GPUs
    PYTHONPATH=src python benchmarks/multidevice.py --devices cuda:0,cuda:0        # spawn path on one GPU
    PYTHONPATH=src python benchmarks/multidevice.py --quick --devices cpu,cpu      # CPU check

Prints the wall time on 1 and on N devices (each including its workers' start-up, loading and
compilation, as a user sees it), their ratio, and the largest difference between the two runs' vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPE_0_6B, word_texts

from qwen_embed.multidevice import encode_on_devices
from qwen_embed.tiny import make_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cuda:0,cuda:1")
    ap.add_argument("--texts", type=int, default=32768)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    devices = args.devices.split(",")
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=128) if args.quick else SHAPE_0_6B
    n = 256 if args.quick else args.texts
    path = make_checkpoint(Path(tempfile.mkdtemp()) / "m", "embedding", dtype="float32" if args.quick else "bfloat16",
                           **shape)  # type: ignore[arg-type]
    texts = word_texts(n, 150, seed=5)
    t = time.perf_counter()
    one = encode_on_devices(path, texts, devices[:1])
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    many = encode_on_devices(path, texts, devices)
    tn = time.perf_counter() - t
    res = {"devices": devices, "texts": n, "one_device_s": t1, "n_devices_s": tn, "speedup": t1 / tn,
           "max_abs_diff": float(np.abs(one - many).max())}
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
