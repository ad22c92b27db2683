"""Gradient checkpointing from outside the model (train/checkpointing.py).

Reference: the same trunk without checkpointing, through torch's own autograd: outputs and every parameter's
gradient equal; the parameter names and `state_dict` keys are torch's own of the plain module; each layer
runs twice per training step (forward, then recomputed in the backward pass: counted by forward hooks on
its submodules, which torch calls on every run) and once in eval mode or without gradients; activations
saved for the backward pass (torch's saved-tensor hooks) are fewer. A randomly initialised trunk of a
few thousand parameters is enough (no tokenizer, no checkpoint folder).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from qwen_embed.batching import PackedBatch, pack
from qwen_embed.config import ModelConfig
from qwen_embed.model import Qwen3Model
from qwen_embed.train.checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing

CONFIG = {"vocab_size": 40, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}


def trunk(seed: int = 0) -> Qwen3Model:
    torch.manual_seed(seed)
    return Qwen3Model(ModelConfig.from_dict(CONFIG)).train()


@pytest.fixture
def batch() -> PackedBatch:
    return pack([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]])


def loss_of(model: Qwen3Model, batch: PackedBatch) -> torch.Tensor:
    h = model(batch)  # [T, H]
    weights = torch.linspace(-1, 1, h.numel()).view_as(h)
    return (h * weights).sum()


def grads(model: Qwen3Model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def count_layer_runs(model: Qwen3Model) -> list[int]:
    """How many times each layer runs from now on: a forward hook on its first submodule (called on every run of it;
    torch stops a recomputation once it has what the backward needs, so a later submodule may not finish)."""
    runs = [0] * len(model.layers)
    for i, layer in enumerate(model.layers):
        def hook(_m: torch.nn.Module, _a: object, _o: object, i: int = i) -> None:
            runs[i] += 1
        layer.input_layernorm.register_forward_hook(hook)
    return runs


def test_outputs_and_gradients_equal_the_plain_trunk(batch: PackedBatch) -> None:
    plain, ckpt = trunk(), enable_gradient_checkpointing(trunk())
    out_plain, out_ckpt = loss_of(plain, batch), loss_of(ckpt, batch)
    out_plain.backward()
    out_ckpt.backward()
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    g_plain, g_ckpt = grads(plain), grads(ckpt)
    assert g_ckpt.keys() == g_plain.keys() == {n for n, _ in plain.named_parameters()}
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-6, atol=1e-7, msg=name)


def test_names_and_state_dict_keys_are_the_plain_modules() -> None:
    plain, ckpt = trunk(), enable_gradient_checkpointing(trunk())
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    ckpt.load_state_dict(plain.state_dict(), strict=True)  # a checkpoint of one loads into the other
    assert "forward" not in vars(plain.layers[0])  # other instances of the class are untouched


@pytest.mark.parametrize(("mode", "grad", "runs"), [("train", True, 2), ("eval", True, 1), ("train", False, 1)])
def test_layers_are_recomputed_only_when_training_with_gradients(batch: PackedBatch, mode: str, grad: bool,
                                                                 runs: int) -> None:
    model = enable_gradient_checkpointing(enable_gradient_checkpointing(trunk()))  # twice: wrapped once
    model.train(mode == "train")
    counts = count_layer_runs(model)
    with torch.set_grad_enabled(grad):
        out = loss_of(model, batch)
    if out.requires_grad:
        out.backward()
    assert counts == [runs] * len(model.layers)


def test_disable_restores_the_plain_call(batch: PackedBatch) -> None:
    model = disable_gradient_checkpointing(enable_gradient_checkpointing(trunk()))
    assert all("forward" not in vars(layer) for layer in model.layers)
    counts = count_layer_runs(model)
    loss_of(model, batch).backward()
    assert counts == [1] * len(model.layers)
    disable_gradient_checkpointing(model)  # undoing twice is harmless


def test_fewer_activations_are_saved_for_backward(batch: PackedBatch) -> None:
    """torch's saved-tensor hooks see what autograd keeps between forward and backward (checkpointed layers
    keep only their inputs)."""

    def saved_elements(model: Qwen3Model) -> int:
        total = 0

        def pack_hook(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            loss_of(model, batch).backward()
        return total

    assert saved_elements(enable_gradient_checkpointing(trunk())) < saved_elements(trunk()) / 2


def test_every_argument_passes_through(batch: PackedBatch) -> None:
    """Pooled rows (`output_indices`), recorded k/v, and a layer called with keyword arguments."""
    plain, ckpt = trunk(), enable_gradient_checkpointing(trunk())
    rec_plain: list[tuple[torch.Tensor, torch.Tensor]] = []
    rec_ckpt: list[tuple[torch.Tensor, torch.Tensor]] = []
    a = plain(batch, output_indices=batch.last_indices, record=rec_plain)
    b = ckpt(batch, output_indices=batch.last_indices, record=rec_ckpt)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert b.shape == (3, CONFIG["hidden_size"]) and len(rec_ckpt) == CONFIG["num_hidden_layers"]
    for (k1, v1), (k2, v2) in zip(rec_plain, rec_ckpt, strict=True):
        torch.testing.assert_close(k2, k1, rtol=0, atol=0)
        torch.testing.assert_close(v2, v1, rtol=0, atol=0)

    def layer_call(model: Qwen3Model) -> Callable[[], torch.Tensor]:
        from qwen_embed.model import rope_cos_sin

        x = model.embed_tokens(batch.input_ids)
        cos, sin = rope_cos_sin(batch.position_ids, CONFIG["head_dim"], model.config.rope_theta, x.dtype)
        return lambda: model.layers[0](x, cos, sin, batch=batch, out_idx=batch.last_indices, prefix=None)[0]

    out_plain, out_ckpt = layer_call(plain)(), layer_call(ckpt)()
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    out_ckpt.sum().backward()
    assert ckpt.layers[0].mlp.up_proj.weight.grad is not None


def test_a_deep_copy_computes_with_its_own_weights(batch: PackedBatch) -> None:
    model = enable_gradient_checkpointing(trunk())
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    reference = disable_gradient_checkpointing(copy.deepcopy(twin))  # a plain copy of the changed weights
    torch.testing.assert_close(twin(batch), reference(batch))
