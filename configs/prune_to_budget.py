"""Prune a trained baseline to a budget in one run: by default, to half of its MACs.

  python main.py --config=configs/prune_to_budget.py --workdir=runs/half \\
      --config.init_from=WORKDIR_OF_A_BASELINE_RUN [--config.target_macs=0.25]

The recipe of configs/finetune.py (gates added to the trained network, then
fine-tuned), with the L0 term a Lagrangian that brings the network's
test-time cost to the target (l0jax/budgets.py) instead of a lambda_l0 to
guess. `--config.target_params=F` (with `--config.target_macs=0`) budgets
parameters instead. Then configs/retrain.py, with `init_from` this run's
workdir, retrains the pruned network with its gates fixed.

The gates learn at 10x the weights' rate (`gate_lr_scale`): in protocol 2's
pilot (results/fashion_mnist_2/PILOT.md; width 0.5, Fashion-MNIST, 25% of
the MACs, one seed, validation only) the network retrained after pruning at
10x validated at 92.58%, at 30x 91.80% and at 1x 91.43%.

The gates' log_alpha are held within [-4.6, 4.6] (`log_alpha_bound`), as
Louizos et al.'s and CoFiPruning's code hold them: unbounded, the open gates
climb where the controller barely reaches them. In a pilot at 10% of the MACs
(results/bound_pilot/; one seed, validation only) the bounded run ended its
pruning phase at 16.8% of the MACs against 22.2%, and the network retrained
after it validated at 90.87% against 85.87%.

A GoogleNet's 1x1 reduce layers are gated too (`gate_reduce`; the ResNet and
the VGG have none): ungated, they held 17-36% of the MACs that protocol 2's
networks kept at 10%. In a pilot at 10% (results/controller_pilot/, step 2;
one seed, validation only) the pruning phase then ended at 10.9% of the MACs
against 16.8%, settling cost 0.6 pp of validation against 10.4, and the
retrained network validated at 91.97% against 90.87%.
"""

from configs import finetune
from l0jax import run_config


def get_config(arg: str | None = None):
  c = finetune.get_config()
  c.target_macs = 0.5
  c.gate_lr_scale = 10.0
  c.log_alpha_bound = 4.6
  c.gate_reduce = True
  return run_config.variant(c, arg)
