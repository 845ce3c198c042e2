"""What the preprocessing wrappers share: their networks by name, and moving them together."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class NetworkHolder(ABC):
    """A wrapper that runs its networks on ``device`` (inputs are built there)."""

    device: torch.device

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every network the wrapper runs, by a name unique across ColorFlow's networks."""

    def to(self, device: str | torch.device) -> "NetworkHolder":
        """Move the networks; inputs are then built on ``device``."""
        self.device = torch.device(device)
        for network in self.networks().values():
            network.to(self.device)
        return self
