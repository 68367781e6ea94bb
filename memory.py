"""
Memory layers: UltraMem (TDQKR, IVE, MCS) and the PKM baseline. (Implemented in the memory-layer issue;
this module holds their settings and the placement interface model.py builds from.)
"""

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class MemoryConfig:
    memory: str = "none"  # "none" | "pkm" | "ultramem"

    def __post_init__(self):
        if self.memory not in ("none", "pkm", "ultramem"):
            raise ValueError(f"memory must be 'none', 'pkm' or 'ultramem', got {self.memory!r}")


@dataclass
class MemoryUnit:
    src: int  # reads block src's normalised FFN input
    dst: int  # output is added to the residual stream right after block dst
    replaces_ffn: bool  # takes the place of block src's MLP (PKM "in place of"); needs src == dst
    module: nn.Module


def build_memory_layers(config) -> list[MemoryUnit]:
    if config.memory == "none":
        return []
    raise ValueError(f"memory={config.memory!r} is not implemented yet")
