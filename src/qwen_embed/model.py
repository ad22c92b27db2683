"""The Qwen3 trunk on packed sequences, with Hugging Face parameter names.

Follows transformers' `Qwen3Model` (modeling_qwen3.py) step by step: token embedding; per layer
RMSNorm -> attention (q/k/v projections, RMSNorm of q and k over head_dim, RoPE, causal GQA
attention, o projection) -> residual -> RMSNorm -> SwiGLU MLP -> residual; final RMSNorm. Parameter
names equal the checkpoint keys of a `Qwen3Model` save (`embed_tokens.weight`,
`layers.{i}.self_attn.q_proj.weight`, ..., `norm.weight`), so loading is a strict identity.

Differences from the reference, all exact up to rounding: no padding (tokens of several sequences are
packed and `cu_seqlens` bounds attention); positions restart at 0 for every sequence (RoPE depends
only on relative positions, so this equals left padding); RoPE tables in float32; with
`output_indices`, the last layer's MLP and the final norm run on those tokens only (on the CPU its
queries and attention too, with or without a shared prefix: attention.rows_attention).

Shared prefix (the reranker's system prompt + instruction + query, the same for every document):
run it once with `record=[]` to collect each layer's k and v, then run the documents alone with
`prefix=SharedPrefix(...)`, positions starting after the prefix; every document attends to the prefix
keys and to its own (see attention.py for the alignment).

Training wraps from outside (train/checkpointing.py recomputes each layer in the backward pass); the
model holds no training flag and `forward` has one return type.

Shapes: T tokens in the batch, H hidden, Hq / Hkv heads, D head_dim, I intermediate, P prefix tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import packed_causal_attention, rows_attention
from .batching import PackedBatch
from .config import ModelConfig


class SharedPrefix:
    """Per-layer k, v [P, Hkv, D] of a prefix, viewed for one packed batch of continuations."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], batch: PackedBatch) -> None:
        """`batch` may live on the host: the gather index is built there (no device synchronisation)
        and moved with a non-blocking copy."""
        self.keys, self.values = keys, values
        p, dev = keys[0].shape[0], keys[0].device
        cu = batch.cu_seqlens.cpu().long()
        lengths = cu[1:] - cu[:-1]  # [n]
        kv_lengths = lengths + p
        cu_k = torch.zeros(batch.num_seqs + 1, dtype=torch.long)
        cu_k[1:] = torch.cumsum(kv_lengths, 0)
        # rows of cat(prefix, batch tokens): for each sequence, the P prefix rows then its own rows
        seq_of = torch.repeat_interleave(torch.arange(batch.num_seqs), kv_lengths)  # [sum(P + L)]
        within = torch.arange(int(cu_k[-1])) - cu_k[:-1][seq_of]  # position inside [prefix; own]
        # own token t = cu[seq] + within - P of the batch sits at row P + t of cat(prefix, batch)
        gather = torch.where(within < p, within, cu[:-1][seq_of] + within)
        pin = dev.type == "cuda"
        self.gather = (gather.pin_memory() if pin else gather).to(dev, non_blocking=pin)
        cu_k32 = cu_k.int()
        self.cu_seqlens_k = (cu_k32.pin_memory() if pin else cu_k32).to(dev, non_blocking=pin)
        self.max_seqlen_k = batch.max_seqlen + p

    def layer(self, i: int) -> PrefixLayer:
        return PrefixLayer(self.keys[i], self.values[i], self.gather, self.cu_seqlens_k, self.max_seqlen_k)


@dataclass
class PrefixLayer:
    """One layer's view of a SharedPrefix (handed to each layer, so compiled code sees no layer index)."""

    k: torch.Tensor  # [P, Hkv, D]
    v: torch.Tensor
    gather: torch.Tensor  # [sum(P + L)]
    cu_seqlens_k: torch.Tensor
    max_seqlen_k: int

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, Hkv, D] batch k, v -> [sum(P + L), Hkv, D] with the prefix in front of every sequence."""
        return torch.cat([self.k, k])[self.gather], torch.cat([self.v, v])[self.gather]


class RMSNorm(nn.Module):
    """x / rms(x) * weight, statistics in float32 (Qwen3RMSNorm); optionally a float32 output."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if out_dtype == torch.float32:  # full precision output (pooled rows)
            return self.weight.float() * x32
        return self.weight * x32.to(dtype)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, D] for the given positions (default RoPE, float32 angles)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    )  # [D/2]
    freqs = position_ids.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] rotated by the per-token angles (rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: PackedBatch,
        out_idx: torch.Tensor | None = None, prefix: PrefixLayer | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (output [T or n, H], k [T, Hkv, D] after RoPE, v [T, Hkv, D])."""
        t = x.shape[0]
        k = self.k_norm(self.k_proj(x).view(t, self.num_kv_heads, self.head_dim))  # [T, Hkv, D]
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        k = apply_rope(k, cos, sin)
        if out_idx is not None and x.device.type == "cpu":
            # CPU: queries and attention for the kept rows only (O(L) per row, not the causal square).
            # Not on CUDA: flash's one-query-per-sequence path splits the keys by batch shape, which the
            # deterministic mode must avoid, and the GPU's full pass costs little there.
            n = out_idx.shape[0]
            q = self.q_norm(self.q_proj(x[out_idx]).view(n, self.num_heads, self.head_dim))  # [n, Hq, D]
            q = apply_rope(q, cos[out_idx], sin[out_idx])
            if prefix is None:
                o = rows_attention(q, k, v, out_idx, batch.cu_seqlens)  # [n, Hq, D]
            else:  # batch row t of sequence i sits at row t + (i + 1) P of the extended keys
                k_all, v_all = prefix.extend(k, v)  # [sum(P + L), Hkv, D]
                seq = torch.searchsorted(batch.cu_seqlens, out_idx, right=True) - 1  # [n]
                rows = out_idx + (seq + 1) * prefix.k.shape[0]  # [n]
                o = rows_attention(q, k_all, v_all, rows, prefix.cu_seqlens_k)  # [n, Hq, D]
            return self.o_proj(o.reshape(n, -1)), k, v  # [n, H]
        q = self.q_norm(self.q_proj(x).view(t, self.num_heads, self.head_dim))  # [T, Hq, D]
        q = apply_rope(q, cos, sin)
        if prefix is None:
            o = packed_causal_attention(q, k, v, batch.cu_seqlens, batch.max_seqlen)  # [T, Hq, D]
        else:
            k_all, v_all = prefix.extend(k, v)  # [sum(P + L), Hkv, D]
            o = packed_causal_attention(q, k_all, v_all, batch.cu_seqlens, batch.max_seqlen,
                                        cu_seqlens_k=prefix.cu_seqlens_k, max_seqlen_k=prefix.max_seqlen_k)
        if out_idx is not None:
            o = o[out_idx]  # [n, Hq, D]: only the rows the caller keeps
        return self.o_proj(o.reshape(o.shape[0], -1)), k, v  # [T or n, H]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # [T, H]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: PackedBatch,
        out_idx: torch.Tensor | None = None, prefix: PrefixLayer | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (hidden [T or n, H], this layer's k [T, Hkv, D], v [T, Hkv, D]) (k, v build a shared prefix)."""
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, batch, out_idx, prefix)
        x = (x if out_idx is None else x[out_idx]) + a  # [T or n, H]
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class Qwen3Model(nn.Module):
    """The trunk: packed token ids -> final hidden states (after the last RMSNorm)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # built under torch.device("meta") to be loaded: no random init of the embedding (its meta `normal_`
        # is a Python decomposition whose first call imports torch._dynamo, ~1 s of CPU per process)
        meta = torch.empty(cfg.vocab_size, cfg.hidden_size) if torch.empty(0).is_meta else None
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=meta)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, batch: PackedBatch, output_indices: torch.Tensor | None = None, prefix: SharedPrefix | None = None,
        record: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Hidden states [T, H], or [n, H] at `output_indices` (e.g. `batch.last_indices`).

        prefix: attend to a shared prefix's keys and values too; record: append each layer's (k, v).
        """
        x = self.embed_tokens(batch.input_ids)  # [T, H]
        cos, sin = rope_cos_sin(batch.position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            out_idx = output_indices if i == last else None
            x, k, v = layer(x, cos, sin, batch, out_idx, None if prefix is None else prefix.layer(i))
            if record is not None:
                record.append((k, v))
        # the pooled rows leave in float32 (no bf16 rounding of the final norm's output)
        return self.norm(x, torch.float32 if output_indices is not None else None)
