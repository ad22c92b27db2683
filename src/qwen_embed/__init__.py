"""qwen-embed: fast, exact Qwen3 Embedding and Reranker."""
