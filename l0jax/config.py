"""The base config every file in `configs/` starts from.

Each field below is documented where it is set; `configs/*.py` only change
what makes their recipe different. Defaults reproduce the seed's
L0-from-scratch recipe on CIFAR-10 (SPEC section 4).
"""

import ml_collections

# Fields that define the network's shape. Resuming or fine-tuning with a
# different value of any of these is refused, because the checkpoint's arrays
# would not fit.
ARCHITECTURE_FIELDS = ("dataset", "use_gate", "width_multiplier", "synthetic_image_size")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- Data -------------------------------------------------------------
  # cifar10 | cifar100 | fashion_mnist | synthetic.
  c.dataset = "cifar10"
  # A folder with the official files (archive or extracted), or a TFDS
  # data_dir. Empty: the Debian Fashion-MNIST folder if present, else TFDS's
  # default directory.
  c.data_dir = ""
  # 0 = the whole training split; otherwise a fixed subset (smoke runs).
  c.max_train_examples = 0
  # Shape and size of the `synthetic` dataset (random class prototypes).
  c.synthetic_image_size = 32
  c.synthetic_num_train = 2048

  # --- Model ------------------------------------------------------------
  c.use_gate = True
  # Scales every channel count; 1.0 is the SPEC's GoogleNet.
  c.width_multiplier = 1.0
  # Initial probability that a gate is closed: 0.5 from scratch, small when
  # fine-tuning a trained network so its channels start open.
  c.droprate_init = 0.5

  # --- Objective --------------------------------------------------------
  c.lambda_l0 = 0.5
  # What the L0 term measures: mean_gate (the seed's mean P(z != 0), so its
  # lambda values transfer), params or macs (expected kept fraction).
  c.penalty = "mean_gate"

  # --- Optimisation -----------------------------------------------------
  c.num_epochs = 180
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4  # AdamW; never applied to the gates' log_alpha.
  c.lr_milestones = (100, 150)  # epochs at which the lr is multiplied...
  c.lr_factor = 0.1  # ...by this.
  # bfloat16 | float32 | auto (bfloat16 on accelerators, float32 on CPU).
  # Parameters, optimizer state, BN statistics and the loss stay float32.
  c.compute_dtype = "auto"

  # --- Run --------------------------------------------------------------
  c.seed = 0
  # A workdir whose best checkpoint initialises the network weights (and BN
  # statistics); gates start fresh at droprate_init.
  c.init_from = ""
  # Training steps per compiled call (fewer host round-trips); a call never
  # crosses an epoch boundary.
  c.steps_per_call = 100
  c.eval_batch_size = 1000
  # Checkpoints kept besides the best by validation accuracy.
  c.keep_checkpoints = 2
  return c
