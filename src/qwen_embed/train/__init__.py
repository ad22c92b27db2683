"""Training of Qwen3 embedding models (contrastive) and rerankers (yes/no SFT) in one loop (docs/train.md).

Modules, in the order a step uses them: `config` (TrainConfig from YAML), `data` (JSONL stream ->
single-task batches -> token ids per rank), `rerank_data` (rows -> yes/no groups), `objectives` (what is
trained: the embedding objective with `gradcache` and `losses` (the report's improved InfoNCE,
Matryoshka), the reranker objective with `rerank_model` and `rerank_losses` (sft, bce, listwise)),
`distributed` (torchrun, gathers with gradients), `loop` (Trainer: AdamW, schedule, non-finite guard,
logs, evaluation cadence), `checkpoints` (save, prune, safe resume with fallback), `checkpointing`
(gradient checkpointing from outside the model), `lora` (peft adapters, merging), `export` (HF checkpoint
folders per layout), `mining` (hard negatives), `evaluate`, `plot`, `stdlib_pairs` (real pairs from the
Python standard library), `cli`.
Nothing heavy is imported here, so that `qwen-embed --help` stays fast.
"""
