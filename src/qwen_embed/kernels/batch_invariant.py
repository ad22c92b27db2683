"""Batch-invariant matrix products and RMSNorm: a row's result does not depend on the other rows.

Library GEMMs choose their tiling, split-K and kernel from the problem size, so the reduction order of
one row of `x @ W.T` changes with the number of rows: a text alone and the same text packed with
others differ in the last bits (bf16 on CUDA: up to 2.5e-3; float32 on the CPU too, for products of
fewer than about 8 rows). Reductions over a row (RMSNorm) likewise pick their thread layout from the
number of rows in eager CUDA code, and Inductor's generated reductions pick a configuration by
benchmarking. This module gives both operations one fixed reduction order per row:

- CUDA matmul: cuBLAS where a probe shows it row invariant for the layer's shape, else a Triton kernel.
  cuBLAS kernels walk K in one order (whatever their M x N tiling) unless the heuristics split K, which
  they do for few rows: products are padded to CUBLAS_MIN_ROWS rows, and `_cublas_row_invariant` checks
  once per (shape, dtype, device, matmul flags) that a block's bits are the same alone, in products of
  other sizes and at other row offsets. Where it is not (another GPU or library), the Triton kernel has
  ONE configuration (no autotuning, no split-K): it tiles BLOCK_M x BLOCK_N and walks K in BLOCK_K steps
  from 0 upwards, so a row's bits depend on K and the weights only. RMSNorm (Triton) reduces each row
  inside one program with a block fixed by the row width.
- CPU: products are computed in fixed-shape chunks of CPU_CHUNK_ROWS rows (the last padded with
  zeros), so the library sees one problem shape whatever the batch; RMSNorm sums its squares with
  `pooling.row_sum`, a fixed pairwise order built from elementwise additions.

Both are registered as custom operators (`torch.ops.qwen_embed.bi_mm`, `bi_rms_norm`), so
torch.compile treats them as opaque calls: Inductor still fuses the elementwise work around them
(RoPE, SwiGLU, residual adds), which is per element and so batch invariant, but cannot swap the
matmul for a template it autotunes. CUDA graphs capture the Triton launches as they are.

`make_batch_invariant(model)` switches a loaded trunk to these operators in place (the parameters are
kept, so it applies after strict loading). Inference only: the operators have no backward.

Guarantee: the same bits for the same input on the same GPU model, driver, torch, Triton and dtype.
Not across GPU models, library versions or dtypes, and not equal to the default path's bits.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..model import RMSNorm
from ..pooling import row_sum

# The one configuration of the CUDA matmul for 16-bit inputs: the fastest of five candidates on the 0.6B
# linear shapes (H200, `benchmarks/deterministic.py --sweep`: 469 TFLOP/s at 65,536 rows; cuBLAS 650-750).
MATMUL_CONFIG = {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
# float32 inputs (exact fp32 products, no tf32): tiles of twice the bytes, so a shorter K step (not measured on a GPU)
MATMUL_CONFIG_FP32 = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
RMS_BLOCK_ELEMENTS = 2048  # elements per RMSNorm program: rows of width D are handled 2048 // D at a time
CPU_CHUNK_ROWS = 64
CUBLAS_MIN_ROWS = 512  # cuBLAS products are padded to at least this many rows (see _cublas_row_invariant)
CUBLAS = True  # False: the Triton kernel for every CUDA product (read per call; a captured graph keeps its own)


@functools.cache
def _triton_kernels() -> tuple[Any, Any]:
    """The two Triton kernels, compiled on first use (Triton is imported only on CUDA)."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["M"])
    def matmul_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,  # type: ignore[no-untyped-def]
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, IEEE: tl.constexpr):
        # y [M, N] = x [M, K] @ w [N, K]^T, float32 accumulation, tiles in grouped order (L2 reuse)
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        size_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m
        rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]  # [BM, BK]
        w_ptrs = w_ptr + rn[None, :] * stride_wn + rk[:, None]  # [BK, BN], a view of w^T
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                a = tl.load(x_ptrs, mask=rm[:, None] < M, other=0.0)
                b = tl.load(w_ptrs, mask=rn[None, :] < N, other=0.0)
            else:
                left = K - k0
                a = tl.load(x_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < left), other=0.0)
                b = tl.load(w_ptrs, mask=(rn[None, :] < N) & (rk[:, None] < left), other=0.0)
            if IEEE:  # noqa: SIM108 (a constexpr branch, as run on the GPU)
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit(do_not_specialize=["R"])
    def rms_norm_kernel(x_ptr, w_ptr, y_ptr, R, D, eps,  # type: ignore[no-untyped-def]
                        ROWS: tl.constexpr, BLOCK: tl.constexpr, F32_OUT: tl.constexpr):
        # ROWS rows of width D per program; statistics in float32, as model.RMSNorm
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        mask = (rows[:, None] < R) & (cols[None, :] < D)
        offs = rows[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # [ROWS, BLOCK]
        inv = tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)  # [ROWS]
        y = x * inv[:, None]
        w = tl.load(w_ptr + cols, mask=cols < D, other=0.0)
        if F32_OUT:
            out = w.to(tl.float32)[None, :] * y
        else:  # weight * y rounded to the input dtype first, as the eager module
            out = w.to(tl.float32)[None, :] * y.to(x_ptr.dtype.element_ty).to(tl.float32)
        tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)

    return matmul_kernel, rms_norm_kernel


# cuBLAS probe: the row counts compared (all >= CUBLAS_MIN_ROWS) and the row offsets a block is moved to
PROBE_ROWS = (CUBLAS_MIN_ROWS, CUBLAS_MIN_ROWS + 1, 1000, 2047, 4096, 12_345, 32_768)
PROBE_OFFSETS = (0, 1, 37, 1000, 20_000)


def _matmul_flags() -> tuple[bool, bool, bool]:
    m = torch.backends.cuda.matmul
    return m.allow_tf32, m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction


@functools.cache
def _cublas_row_invariant(n: int, k: int, dtype: torch.dtype, device: torch.device,
                          flags: tuple[bool, bool, bool]) -> bool:
    """True when cuBLAS gives every row of x @ w.T the same bits whatever the row count (>= CUBLAS_MIN_ROWS)
    and wherever the row sits: a block of CUBLAS_MIN_ROWS rows is multiplied alone, inside products of
    PROBE_ROWS rows, and at PROBE_OFFSETS of a 32,768-row product, and must match bit for bit.

    Library GEMMs reduce K in one order per kernel unless they split K, which their heuristics do for
    few rows (measured on an H200: the 3,072-wide down projection splits below 256 rows, nothing else
    does); `_mm_cuda` pads to CUBLAS_MIN_ROWS and uses cuBLAS where this holds, the Triton kernel where
    it does not. The answer depends only on the shape, dtype, device and matmul flags (the key)."""
    gen = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(n, k, device=device, dtype=dtype, generator=gen) / k**0.5
    big = torch.randn(max(PROBE_ROWS) + max(PROBE_OFFSETS) + CUBLAS_MIN_ROWS, k, device=device, dtype=dtype,
                      generator=gen)
    block = big[:CUBLAS_MIN_ROWS].clone()
    ref = torch.mm(block, w.t())
    for rows in PROBE_ROWS:
        if not torch.equal(torch.mm(big[:rows].clone(), w.t())[:CUBLAS_MIN_ROWS], ref):
            return False
    for off in PROBE_OFFSETS:
        moved = big.clone()
        moved[off : off + CUBLAS_MIN_ROWS] = block
        if not torch.equal(torch.mm(moved, w.t())[off : off + CUBLAS_MIN_ROWS], ref):
            return False
    return True


def matmul_backend(n: int, k: int, dtype: torch.dtype, device: torch.device) -> str:
    """Which kernel `bi_mm` uses on CUDA for x [M, k] @ w [n, k]^T: "cublas" (probed row invariant) or "triton"."""
    return "cublas" if CUBLAS and _cublas_row_invariant(n, k, dtype, device, _matmul_flags()) else "triton"


def _mm_cuda(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    if matmul_backend(n, k, x.dtype, x.device) == "cublas":
        if m >= CUBLAS_MIN_ROWS and x.data_ptr() % 256 == 0:  # aligned like the probe's fresh tensors
            return torch.mm(x, w.t())
        # padded to the probed row floor, in a fresh (allocator-aligned) tensor
        padded = x.new_zeros(max(m, CUBLAS_MIN_ROWS), k)
        padded[:m] = x
        return torch.mm(padded, w.t())[:m].clone()
    return _mm_triton(x, w)


def _mm_triton(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    import triton

    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    cfg = dict(MATMUL_CONFIG_FP32 if x.dtype == torch.float32 else MATMUL_CONFIG)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    matmul_kernel, _ = _triton_kernels()
    with torch.cuda.device(x.device):
        matmul_kernel[grid](x, w, y, m, n, k, x.stride(0), w.stride(0), y.stride(0),
                            EVEN_K=k % cfg["BLOCK_K"] == 0, IEEE=x.dtype == torch.float32, **cfg)
    return y


def _mm_cpu(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    m = x.shape[0]
    pad = (-m) % CPU_CHUNK_ROWS
    if pad:
        x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
    return torch.cat([F.linear(chunk, w) for chunk in x.split(CPU_CHUNK_ROWS)])[:m]  # [M, N]


@torch.library.custom_op("qwen_embed::bi_mm", mutates_args=())
def bi_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T -> [M, N], each row's reduction order fixed by K alone."""
    if x.shape[1] != weight.shape[1]:
        raise InputError(f"bi_mm: x has {x.shape[1]} columns but the weight {weight.shape[1]}; pass x [M, K] "
                         f"and weight [N, K] with the same K.")
    x, weight = x.contiguous(), weight.contiguous()
    return _mm_cuda(x, weight) if x.is_cuda else _mm_cpu(x, weight)


@bi_mm.register_fake
def _bi_mm_fake(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("qwen_embed::bi_rms_norm", mutates_args=())
def bi_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, float32_out: bool) -> torch.Tensor:
    """RMSNorm over the last dimension, one fixed reduction order per row (see model.RMSNorm)."""
    out_dtype = torch.float32 if float32_out else x.dtype
    if not x.is_cuda:  # a fixed pairwise sum: the eager reduction's order may depend on the row count
        x32 = x.float()
        x32 = x32 * torch.rsqrt(row_sum(x32 * x32).unsqueeze(-1) / x.shape[-1] + eps)
        return (weight.float() * x32 if float32_out else weight * x32.to(x.dtype)).to(out_dtype)
    d = x.shape[-1]
    xc = x.contiguous()
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    r = xc.numel() // d
    if r == 0:
        return y
    block = 1 << (d - 1).bit_length()  # next power of two >= D
    rows = max(1, RMS_BLOCK_ELEMENTS // block)
    _, rms_norm_kernel = _triton_kernels()
    with torch.cuda.device(x.device):
        rms_norm_kernel[((r + rows - 1) // rows,)](xc, weight.contiguous(), y, r, d, eps, ROWS=rows, BLOCK=block,
                                                     F32_OUT=float32_out, num_warps=4)
    return y


@bi_rms_norm.register_fake
def _bi_rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, eps: float, float32_out: bool) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.float32 if float32_out else x.dtype)


class BatchInvariantLinear(nn.Linear):
    """nn.Linear through `bi_mm` (same parameters; set by `make_batch_invariant`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = bi_mm(x.reshape(-1, x.shape[-1]), self.weight)  # [rows, N]
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias


class BatchInvariantRMSNorm(RMSNorm):
    """model.RMSNorm through `bi_rms_norm` (same parameters; set by `make_batch_invariant`)."""

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        return bi_rms_norm(x, self.weight, self.eps, out_dtype == torch.float32)


def make_batch_invariant(model: nn.Module) -> nn.Module:
    """Switch every nn.Linear and RMSNorm of `model` to the batch-invariant operators, in place.

    Apply before torch.compile and CUDA-graph capture; the parameters and their names are unchanged."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = BatchInvariantLinear
        elif type(module) is RMSNorm:
            module.__class__ = BatchInvariantRMSNorm
    return model


def is_batch_invariant(model: nn.Module) -> bool:
    """True when `make_batch_invariant` has switched this model."""
    return any(isinstance(m, (BatchInvariantLinear, BatchInvariantRMSNorm)) for m in model.modules())
