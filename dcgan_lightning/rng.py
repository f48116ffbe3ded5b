"""Random streams per rank, and every rank's RNG states in checkpoints for exact resume.

`seed_everything` seeds every rank alike, so with W ranks DiffAugment, flips and dropout would
draw the same W copies of their randomness. `seed_rank` reseeds the global generators of this
process from (run seed, rank) once the model is built (its initial weights stay the same
everywhere). Training noise comes from `keyed_generator` (seeded by step) and needs no state.

Only rank 0 writes checkpoints, so `gather_rng_states` collects every rank's states (CPU, its own
CUDA device, numpy, Python) into one list that `restore_rng_states` hands back rank by rank. All
states are plain tensors, ints and lists: checkpoints stay `weights_only=True` loadable.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from any integers, well mixed (splitmix64 over the keys): a few microseconds,
    so a fresh seed per training step costs nothing next to the step."""
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state ^ (int(key) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK
        state ^= state >> 29
    return state >> 1


_MASK = 2**64 - 1


def keyed_generator(device: torch.device, *keys: int) -> torch.Generator:
    """A private generator seeded from `keys`: draws that resume exactly and touch no global RNG."""
    return torch.Generator(device=device).manual_seed(derive_seed(*keys))


def seed_rank(seed: int, rank: int) -> None:
    """Give this rank its own global streams (torch CPU and CUDA, numpy, Python `random`)."""
    rank_seed = derive_seed(seed, rank)
    torch.manual_seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    random.seed(rank_seed)


def rng_states() -> dict[str, Any]:
    """This process's states: torch CPU, its current CUDA device, numpy, Python `random`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(python_state), gauss],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `rng_states`, onto this process's current CUDA device."""
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state(states["cuda"][0])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's `rng_states()`, indexed by rank. Collective under DDP: all ranks call it."""
    mine = rng_states()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, {k: _to_cpu(v) for k, v in mine.items()})
    return every


def restore_rng_states(saved: dict[str, Any] | list[dict[str, Any]], rank: int, world: int) -> None:
    """Give this rank the states it saved. A checkpoint of another world size restores the ranks
    it has and says which ranks start fresh streams (from the run seed, as a new run would)."""
    ranks = saved if isinstance(saved, list) else [saved]  # before per-rank states: rank 0's only
    if len(ranks) != world and rank == 0:
        rank_zero_warn(
            f"The checkpoint holds the random states of {len(ranks)} rank(s); this run has {world}"
            ": "
            f"ranks 0-{min(len(ranks), world) - 1} continue their streams exactly"
            + (f", ranks {len(ranks)}-{world - 1} start fresh ones" if world > len(ranks) else "")
            + ". Weights, optimizers and counters are restored in full; the augmentations drawn "
            "from here on differ from an uninterrupted run's."
        )
    if rank < len(ranks):
        set_rng_states(ranks[rank])


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
