"""Kernels that replace library ones where we need a property the library does not promise.

`batch_invariant`: matrix products and RMSNorm whose result for one row does not depend on the other
rows of the batch (the deterministic mode of `Embedder` and `Reranker`).
"""
