"""The PyTorch original's best recipe: gates added to a trained baseline, then fine-tuned.

  python main.py --config=configs/finetune.py --workdir=runs/ft \\
      --config.init_from=WORKDIR_OF_A_BASELINE_RUN [--config.lambda_l0=20]

Gates start nearly open (droprate_init 0.05), so the trained network starts
where it was, and lambda_l0 closes them. The quick start prunes with it
(penalty=macs, lambda_l0=40).
"""

from l0jax import run_config


def get_config(arg: str | None = None):
  c = run_config.base_config()
  c.droprate_init = 0.05
  c.lambda_l0 = 20.0
  c.lr_milestones = (10, 60, 100, 130, 160)
  c.lr_factor = 0.5
  return run_config.variant(c, arg)
