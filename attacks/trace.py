"""What an attack saw while it ran, per example of its batch: the raw material of the indicators
of attack failure (Pintor et al., NeurIPS 2022; ``bench.indicators`` turns it into verdicts).

Recording reads tensors the attack computes anyway (logits, gradients, its best sizes); it adds no
pass and changes no result. Attacks that do not record leave the fields None."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttackTrace:
    """Per example (rows of the attacked batch):

    - ``ever_fooled``: some point the attack queried fooled the model (silent success when the
      returned point does not);
    - ``first_gradient_norm``: L2 norm of the input gradient of the attack's loss at its first step
      (zero: the model gives the attack nothing to follow);
    - ``objective``: per step, the quantity the attack drives (the loss it ascends for bounded
      attacks; the smallest successful perturbation so far for minimum-norm attacks), NaN where a
      row was not computed at that step;
    - ``maximize``: whether ``objective`` should rise (bounded) or fall (minimum-norm);
    - ``source_fooled``: transfer attacks, the point fooled the source model it was crafted on."""

    ever_fooled: torch.Tensor | None = None
    first_gradient_norm: torch.Tensor | None = None
    objective: list[torch.Tensor] = field(default_factory=list)
    maximize: bool = True
    source_fooled: torch.Tensor | None = None

    def record_step(self, values: torch.Tensor, rows: torch.Tensor | None, size: int) -> None:
        """Append one step's ``values`` for ``rows`` of a batch of ``size`` (None: every row)."""
        if rows is None:
            self.objective.append(values.detach().float().clone())
            return
        full = torch.full((size,), float("nan"), device=values.device)
        full[rows] = values.detach().float()
        self.objective.append(full)

    def record_fooled(self, fooled: torch.Tensor, rows: torch.Tensor | None, size: int) -> None:
        if self.ever_fooled is None:
            self.ever_fooled = torch.zeros(size, dtype=torch.bool, device=fooled.device)
        if rows is None:
            self.ever_fooled |= fooled
        else:
            self.ever_fooled[rows] |= fooled

    def objective_matrix(self) -> torch.Tensor | None:
        """(steps, batch) on the CPU, or None when nothing was recorded."""
        return torch.stack(self.objective).cpu() if self.objective else None
