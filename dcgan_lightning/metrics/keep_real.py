"""A torchmetrics Metric whose real-image states survive `reset`: the real set is seen once."""

from __future__ import annotations

from torchmetrics import Metric


class KeepsRealStates(Metric):
    """`reset` forgets the generated images only: states named `real_*` stay."""

    def reset(self) -> None:
        real = {k: self._defaults.pop(k) for k in list(self._defaults) if k.startswith("real_")}
        try:  # Metric.reset() clears every state in `_defaults`, in place
            super().reset()
        finally:
            self._defaults.update(real)
