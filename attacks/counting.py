"""Pass counting for code we do not own (pyautoattack, torchattacks): a transparent wrapper that
counts the images of every forward and of every backward that reaches the model's output."""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import PassCounter


class CountingModel(nn.Module):
    """Calls ``model`` unchanged; adds each forward's batch size to ``counter.forward`` and, when
    a gradient flows back through the logits, the batch size to ``counter.backward``.

    Holding ``model`` as a submodule means ``train()``/``eval()`` on the wrapper reach it; the
    attack base class restores the caller's mode afterwards."""

    def __init__(self, model: nn.Module, counter: PassCounter) -> None:
        super().__init__()
        self.model = model
        self.counter = counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        images = x.shape[0]
        self.counter.forward += images
        if logits.requires_grad:
            logits.register_hook(lambda grad: self._backward(images, grad))
        return logits

    def _backward(self, images: int, grad: torch.Tensor) -> torch.Tensor:
        self.counter.backward += images
        return grad
