"""qwen-embed: fast, exact Qwen3 Embedding and Reranker.

    from qwen_embed import Embedder, Reranker
    emb = Embedder.from_pretrained("Qwen/Qwen3-Embedding-0.6B")
    q = emb.encode_queries(["What is the capital of China?"])
    d = emb.encode_documents(["The capital of China is Beijing."])
    scores = q @ d.T
"""

from .embedder import DEFAULT_INSTRUCTION, Embedder, format_query
from .errors import QwenEmbedError
from .reranker import Reranker, RerankResult

__all__ = ["DEFAULT_INSTRUCTION", "Embedder", "QwenEmbedError", "RerankResult", "Reranker", "format_query"]
__version__ = "0.1.0"
