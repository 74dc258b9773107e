"""store_kv: write new tokens' K/V into a paged cache by slot mapping (prefill chunks, decode tokens, splices).

Vocabulary (as in engine/block_manager.py): the cache of one layer is ``k_cache``/``v_cache`` of shape (num_blocks, block_size,
num_kv_heads, head_dim); token t goes to slot ``slot_mapping[t]`` = block_id * block_size + offset; a negative
slot means "skip" (padding rows). Backends: ``triton`` (echo.triton_kernels.store_kv), ``torch`` (reference).
"""

from __future__ import annotations

import torch

from . import _backend

BACKENDS = ("triton", "torch")


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """Plain-PyTorch reference: index_copy_ of the tokens with a non-negative slot into the flattened caches."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    heads, dim = k_cache.shape[-2:]
    k_cache.view(-1, heads, dim).index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_cache.view(-1, heads, dim).index_copy_(0, slots, v[keep].to(v_cache.dtype))


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, *, backend: str | None = None, check_slots: bool = True) -> None:
    """Write K/V rows into their slots, in place.

    Args:
        k, v: (num_tokens, num_kv_heads, head_dim), same dtype as the caches; any token/head strides, head_dim
            must be unit-stride (a slice of a fused QKV projection qualifies).
        k_cache, v_cache: (num_blocks, block_size, num_kv_heads, head_dim), contiguous.
        slot_mapping: (num_tokens,) int64 on the caches' device; slot = block * block_size + offset, or -1 to skip.
            Slots must be distinct (two tokens never share a slot in one call).
        backend: "auto"/None, "triton" or "torch".
        check_slots: check that no slot is past the cache (on a GPU a host sync per call); the engine turns it
            off for slots its block manager computed, and must inside a CUDA graph capture.

    Raises:
        ValueError: a shape, dtype, device or stride the kernel does not handle, or a slot past the cache.
    """
    _check(k, v, k_cache, v_cache, slot_mapping, check_slots)
    chosen = _backend.resolve("store_kv", BACKENDS, k_cache.device, backend)
    if chosen == "triton":
        from ..triton_kernels.store_kv import store_kv as triton_store_kv

        triton_store_kv(k, v, k_cache, v_cache, slot_mapping)
    else:
        store_kv_ref(k, v, k_cache, v_cache, slot_mapping)


def _check(k, v, k_cache, v_cache, slot_mapping, check_slots: bool = True) -> None:
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"store_kv: k and v must both be (num_tokens, num_kv_heads, head_dim); got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"store_kv: caches must both be (num_blocks, block_size, num_kv_heads, head_dim); got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"store_kv: token rows {tuple(k.shape[1:])} do not match cache rows {tuple(k_cache.shape[2:])}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("store_kv: k_cache and v_cache must be contiguous")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("store_kv: k and v need unit stride on head_dim")
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        raise ValueError(f"store_kv: dtype {k.dtype}/{v.dtype} differs from the cache's {k_cache.dtype}")
    devices = {t.device for t in (k, v, k_cache, v_cache, slot_mapping)}
    if len(devices) != 1:
        raise ValueError(f"store_kv: all tensors must be on one device, got {sorted(map(str, devices))}")
    if slot_mapping.dtype != torch.int64 or slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"store_kv: slot_mapping must be int64 of shape ({k.shape[0]},), got "
                         f"{slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    if check_slots and slot_mapping.numel() and int(slot_mapping.max()) >= num_slots:
        raise ValueError(f"store_kv: slot {int(slot_mapping.max())} is past the cache's {num_slots} slots")
