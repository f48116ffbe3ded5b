"""DDP for a GAN: a DDP wrapper each around G and D instead of one around the LightningModule.

With one wrapper every `manual_backward` expects gradients for all of G and D; the D step leaves
G unused and plain `ddp` fails ("parameters that were not used in producing the loss").
`ddp_find_unused_parameters_true` runs, but searches the graph at every backward and all-reduces
both nets' gradients at both steps: twice the traffic. Separate wrappers all-reduce exactly the
parameters each step updates: the D step reduces D's gradients, and the G step (which calls the
bare D with frozen parameters) reduces G's.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy


class GANDDPStrategy(DDPStrategy):
    """`DDPStrategy` that wraps `model.generator` and `model.discriminator`, not the module.

    The training step calls the wrappers through `model.train_nets`; the LightningModule itself
    stays unwrapped, so checkpoints keep clean keys. Takes every `DDPStrategy` argument.
    """

    strategy_name = "gan_ddp"

    def _configure_launcher(self) -> None:
        # Under torchrun or SLURM the ranks exist already: `spawn` would start a second set.
        if self.cluster_environment.creates_processes_externally:
            self._start_method = "popen"  # its launcher starts nothing in that case
        super()._configure_launcher()

    def configure_ddp(self) -> None:
        if self._ddp_comm_hook is not None:
            raise ValueError("GANDDPStrategy takes no ddp_comm_hook: G and D have a DDP each")
        module = self.lightning_module
        module.train_nets = {
            "G": self._setup_model(module.generator),
            "D": self._setup_model(module.discriminator),
        }

    def teardown(self) -> None:
        module = self.lightning_module
        if module is not None:
            module.train_nets = {"G": module.generator, "D": module.discriminator}
        super().teardown()
