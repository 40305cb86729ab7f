"""The one place that touches residual streams: capture, ablation and addition hooks.

Every hook is installed by a context manager that removes it in ``finally``, so an exception
mid-forward never leaves a model silently steered. Blocks are found through the per-family
table (:func:`safeanchor.families.get_blocks`); an unknown family is a clear error.

Layer convention: ``layer=l`` is the residual-stream *input* of decoder block ``l``, which is
what a forward pre-hook on block ``l`` sees and what HF returns as ``hidden_states[l]``.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> m = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
...                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
>>> ids = torch.tensor([[1, 5, 7, 9]])
>>> with capture_block_inputs(m, positions=torch.tensor([[3]])) as acts:
...     _ = m(ids)
>>> acts[1].shape  # (B, P, D): block 1's input at position 3
torch.Size([1, 1, 16])
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from .families import family_of, get_blocks


class StopForward(Exception):
    """Raised by a capture hook once the last needed block input is stored.

    Extraction needs only block inputs; stopping there skips the remaining blocks, the final
    norm and the LM head (the largest single matmul of a small model).
    """


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def block_submodules(model, layer: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """``(block, attention, mlp)`` of decoder block ``layer``, via the family table."""
    fam = family_of(_base(model).config.model_type)
    block = get_blocks(model)[layer]
    return block, getattr(block, fam.attn_path), getattr(block, fam.mlp_path)


@contextmanager
def hook_handles() -> Iterator[list]:
    """Yield a list to append hook handles to; every handle in it is removed on exit.

    Register inside the ``with`` so a failure halfway through registration still removes the
    hooks already installed.
    """
    handles: list = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


@contextmanager
def capture_block_inputs(
    model,
    *,
    layers: Sequence[int] | None = None,
    positions: torch.Tensor | None = None,
    stop_early: bool = False,
) -> Iterator[dict[int, torch.Tensor]]:
    """Capture the residual input of the given blocks during the forward passes in the block.

    ``positions``: optional ``(B, P)`` long tensor of token indices to keep per row; the slice
    is taken inside the hook, so only ``(B, P, D)`` per layer is ever held. Without it the whole
    ``(B, T, D)`` input is kept. ``stop_early``: raise :class:`StopForward` after the highest
    requested layer is captured (catch it around the forward call, see
    :func:`forward_until_captured`). The dict is overwritten by each forward pass.
    """
    blocks = get_blocks(model)
    wanted = sorted(set(range(len(blocks)) if layers is None else layers))
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(blocks):
        raise ValueError(f"layers must be within 0..{len(blocks) - 1}, got {list(layers or [])}")
    store: dict[int, torch.Tensor] = {}
    last = wanted[-1]

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            x = _hidden_of(args, kwargs)  # (B, T, D)
            if positions is not None:
                idx = positions.to(x.device)  # (B, P)
                x = x[torch.arange(x.shape[0], device=x.device)[:, None], idx]  # (B, P, D)
            store[layer] = x.detach()
            if stop_early and layer == last:
                raise StopForward
            return None

        return hook

    with hook_handles() as handles:
        for l in wanted:
            handles.append(blocks[l].register_forward_pre_hook(make_hook(l), with_kwargs=True))
        yield store


@contextmanager
def capture_residuals(model, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Capture block inputs *with their autograd graph*, for a loss term: ``store[l]`` ``(B, T, D)``
    is what ``hidden_states[l]`` of the same forward would be. The first forward in the block wins
    (a second, e.g. a no-grad metrics pass, does not replace it), and the hooks are removed on exit,
    so an activation-checkpointing recompute during the backward never reaches them."""
    blocks = get_blocks(model)
    wanted = sorted(set(layers))
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(blocks):
        raise ValueError(f"layers must be within 0..{len(blocks) - 1}, got {list(layers)}")
    store: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            if layer not in store:
                store[layer] = _hidden_of(args, kwargs)
            return None

        return hook

    with hook_handles() as handles:
        for l in wanted:
            handles.append(blocks[l].register_forward_pre_hook(make_hook(l), with_kwargs=True))
        yield store


def forward_until_captured(model, **inputs) -> None:
    """Call ``model(**inputs)`` and swallow the :class:`StopForward` a capture hook raises."""
    try:
        model(**inputs)
    except StopForward:
        pass


def _project_out(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``x - r̂ r̂ᵀ x`` along the last dim, in ``x``'s dtype."""
    r = unit.to(device=x.device, dtype=x.dtype)
    return x - (x @ r).unsqueeze(-1) * r


@contextmanager
def ablate_direction(model, direction: torch.Tensor) -> Iterator[None]:
    """Remove ``direction`` from the residual stream everywhere (Arditi et al. directional ablation).

    ``x ← x − r̂ r̂ᵀ x`` on every block input and on every attention and MLP output, so no
    component writes along r̂ and nothing downstream can read it. ``direction`` ``(D,)`` is
    normalised here; its scale is irrelevant.

    >>> # with ablate_direction(model, rd.unit(layer=12)): texts = generate(model, tok, prompts)
    """
    unit = direction.detach().to(torch.float32)
    norm = unit.norm()
    if unit.ndim != 1 or not torch.isfinite(norm) or norm == 0:
        raise ValueError(f"direction must be a finite non-zero (D,) vector, got shape {tuple(direction.shape)}")
    unit = unit / norm

    def pre_hook(module, args, kwargs):
        return _with_hidden(args, kwargs, _project_out(_hidden_of(args, kwargs), unit))

    def out_hook(module, args, output):
        if isinstance(output, tuple):  # attention returns (attn_output, attn_weights)
            return (_project_out(output[0], unit), *output[1:])
        return _project_out(output, unit)

    with hook_handles() as handles:
        for layer in range(len(get_blocks(model))):
            block, attn, mlp = block_submodules(model, layer)
            handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(attn.register_forward_hook(out_hook))
            handles.append(mlp.register_forward_hook(out_hook))
        yield


@contextmanager
def add_direction(model, vector: torch.Tensor, layer: int, coef: float = 1.0) -> Iterator[None]:
    """Activation addition: ``x ← x + coef · vector`` at the input of block ``layer``, every position.

    Arditi et al. add the raw mean difference (``coef=1``) at the direction's own layer to
    induce refusal.

    >>> # with add_direction(model, rd.vector(layer=12), layer=12): texts = generate(model, tok, prompts)
    """
    block = get_blocks(model)[layer]
    v = coef * vector.detach().to(torch.float32)  # (D,)
    if v.ndim != 1 or not torch.isfinite(v).all():
        raise ValueError(f"vector must be a finite (D,) tensor, got shape {tuple(vector.shape)}")

    def pre_hook(module, args, kwargs):
        x = _hidden_of(args, kwargs)
        return _with_hidden(args, kwargs, x + v.to(device=x.device, dtype=x.dtype))

    with hook_handles() as handles:
        handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield
