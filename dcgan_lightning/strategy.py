"""DDP for a GAN: a DDP wrapper each around G and D instead of one around the LightningModule.

With one wrapper every `manual_backward` expects gradients for all of G and D; the D step leaves
G unused and plain `ddp` fails ("parameters that were not used in producing the loss"). Separate
wrappers all-reduce exactly the parameters each step updates: the D step reduces D's gradients, and
the G step (which calls the bare D with frozen parameters) reduces G's.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel


class GANDDPStrategy(DDPStrategy):
    strategy_name = "gan_ddp"

    def configure_ddp(self) -> None:
        module = (
            self.model
        )  # the LightningModule itself stays unwrapped: checkpoints keep clean keys
        device_ids = self.determine_ddp_device_ids()
        module.train_nets = {
            name: DistributedDataParallel(net, device_ids=device_ids, **self._ddp_kwargs)
            for name, net in (("G", module.generator), ("D", module.discriminator))
        }

    def teardown(self) -> None:
        if self.lightning_module is not None:
            lm = self.lightning_module
            lm.train_nets = {"G": lm.generator, "D": lm.discriminator}
        super().teardown()
