"""int8 CPU inference: dynamic quantization of the trunk's linear layers (`dtype="int8"`).

Each `nn.Linear` (q/k/v/o projections, gate/up/down of the MLP) becomes torch.ao's
`DynamicQuantizedLinear`: weights stored once in int8 with one scale per output channel (symmetric),
activations quantized per batch on the fly, the matmul in int8 with int32 accumulation (fbgemm / x86
kernels), the output in float32. Embeddings, norms, RoPE and attention stay float32. The weights
take a quarter of the memory and the linear layers run about 2-3x faster on AVX2/AVX-512 CPUs.

It is an approximation: the error against float32 was measured on random weights only (BENCHMARKS.md,
CPU section: cosine 0.95 on short texts, 0.73 on one 16K-token input of the 0.6B shape, since one
activation scale covers a whole batch); check the retrieval quality on your own data before relying on it.
CPU only: CUDA has no kernels for these modules, so `dtype="int8"` with a CUDA device is refused.

torch.ao's eager quantization is deprecated in favour of torchao, whose int8 path did not run faster
than float32 on this CPU without compilation (measured: 0.55 s against 0.48 s for a 2048x1024x3072
matmul), so the deprecation warnings are silenced here and the choice is revisited when torch drops it.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .errors import InputError
from .settings import check_int8_device as check_int8_device  # torch-free, as the supervisor checks it too
from .settings import is_int8 as is_int8


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of a float32 CPU model with a dynamically quantized int8 one (in place)."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:  # pragma: no cover - a torch without torch.ao eager quantization
        raise InputError(f"this torch ({torch.__version__}) has no torch.ao dynamic quantization; "
                         "use dtype='float32'.") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of torch.ao eager quantization
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
