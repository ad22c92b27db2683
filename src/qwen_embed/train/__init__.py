"""Contrastive training of Qwen3 embedding models (docs/train.md).

Modules, in the order a step uses them: `config` (TrainConfig from YAML), `data` (JSONL stream ->
single-task batches -> token ids per rank), `gradcache` (chunked forward/backward with cached
embedding gradients), `losses` (the report's improved InfoNCE, Matryoshka), `distributed` (torchrun,
gathers with gradients), `loop` (Trainer: AdamW, schedule, checkpoints, resume, logs, evaluation),
`lora` (peft adapters, merging), `export` (HF checkpoint folders), `mining` (hard negatives),
`evaluate`, `plot`, `stdlib_pairs` (real pairs from the Python standard library), `cli`.
Nothing heavy is imported here, so that `qwen-embed --help` stays fast.
"""
