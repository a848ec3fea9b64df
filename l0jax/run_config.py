"""The base config every file in `configs/` starts from, its checks, and the plan it makes.

Each field below is documented where it is set; `configs/*.py` only change
what makes their recipe different. Defaults reproduce the PyTorch original's
L0-from-scratch recipe on CIFAR-10. `validate` refuses a config that cannot
make a sensible run and resolves it, once, into its `GatePlan`: what the run
does with its gates, which the code that trains, tests and analyses it reads
instead of the fields.
"""

import math
from typing import Any, NamedTuple

import ml_collections

from l0jax.errors import UserError

# gates.OPEN_AT, the log_alpha from which a gate is fully open at test time: the config's checks
# run before JAX loads (cli.checked_config), and gates loads it.
OPEN_AT = math.log(11)

# Fields that define the network's shape. Resuming or fine-tuning with a
# different value of any of these is refused, because the checkpoint's arrays
# would not fit.
ARCHITECTURE_FIELDS = ("dataset", "model", "depth", "use_gate", "gate_residual", "gate_reduce",
                       "width_multiplier", "synthetic_image_size")
GATE_LAYOUT = ("gate_residual", "gate_reduce")  # which channels carry gates, where use_gate
GATE_FIELDS = ("use_gate", *GATE_LAYOUT)
# What a run continued from another one (`init_from`, or its own workdir when
# resuming) takes from that run's config, unless given on the command line:
# the data and the network's shape, but not its gates (fine-tuning adds them to
# a baseline). A run that keeps init_from's gates also takes their layout, and
# a mask made from mask_from's gates takes that run's. Resuming also keeps the
# gates and the split.
SOURCE_FIELDS = tuple(f for f in ARCHITECTURE_FIELDS if f not in GATE_FIELDS) + (
    "data_dir", "synthetic_num_train")
RESUME_FIELDS = SOURCE_FIELDS + GATE_FIELDS + ("val_split",)


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
  # Which 10% of the official training set validates: hash (chosen by each
  # image and label, the same from every source) or seeded (by file order: the
  # split of runs made before hash existed, which a saved config without this
  # field reads as).
  c.val_split = "hash"
  # Shape and size of the `synthetic` dataset (random class prototypes).
  c.synthetic_image_size = 32
  c.synthetic_num_train = 2048

  # --- Model ------------------------------------------------------------
  # googlenet: the SPEC's UvA GoogleNet, gated on its branches' outputs.
  # resnet: He et al.'s CIFAR ResNet (option-A shortcuts), gated inside its
  # blocks (l0jax/resnet.py). vgg: the CIFAR VGG with BN, every conv gated
  # (l0jax/vgg.py).
  c.model = "googlenet"
  # resnet: 6n + 2 for n >= 1 (20, 32, 44, 56, 110, ...); vgg: 11, 13, 16 or
  # 19 (the paper's A, B, D, E); 0: the usual one (ResNet-20, VGG-11). The
  # googlenet has one depth: 0.
  c.depth = 0
  c.use_gate = True
  # resnet: gates its stage widths too (the channels the residual adds tie, one
  # gate per width shared by the stem and the blocks that make them), besides
  # the blocks' inner channels.
  c.gate_residual = False
  # googlenet: gates the 3x3 and 5x5 branches' 1x1 reduce layers too, besides
  # each branch's output, so that a branch can narrow inside. The resnet and the
  # vgg have no reduce layers (their gates are on every conv's own channels) and
  # build the same network either way.
  c.gate_reduce = False
  # Scales every channel count; 1.0 is the network at its published widths.
  c.width_multiplier = 1.0
  # Sets the gates' initial log_alpha to log((1 - p) / p), as the PyTorch original did
  # (Louizos et al.'s "drop rate"): 0.5 from scratch, small when fine-tuning a
  # trained network so its channels start open. It is not the probability
  # that a gate is exactly 0, which the stretch makes smaller.
  c.droprate_init = 0.5
  # False retrains the network a pruning run made: the gates of `init_from`
  # are loaded and fixed at their test-time values (pruned channels stay 0, no
  # gate noise, no L0 gradient), and only the weights learn.
  c.train_gates = True
  # A one-shot mask instead, the methods L0 is compared with (l0jax/masks.py):
  # l1_norm (largest filter L1 norms first, Li et al. 2017) or random channels
  # of init_from's network, kept while they fit target_macs (or
  # target_params), then fixed like a pruned run's gates (train_gates=False).
  # Or, with no target, a mask made from the gates another run decided
  # (mask_from): its kept channels (decided), or as many in each gated layer
  # chosen at random (random_widths), which separates an L0 run's choice of
  # channels and its allocation of widths from its noisy training.
  # "": none.
  c.mask = ""
  c.mask_from = ""  # the workdir of a gated run, at its last checkpoint

  # --- Objective --------------------------------------------------------
  c.lambda_l0 = 0.5
  # What the L0 term measures: mean_gate (the PyTorch original's mean P(z != 0), so its
  # lambda values transfer), params or macs (expected kept fraction).
  c.penalty = "mean_gate"
  # Prune to a budget instead (l0jax/budgets.py): the kept fraction of the
  # full network's MACs (or parameters) the run must end at, in (0, 1]; at
  # most one of the two; 0: no target. With a target the L0 term is
  # l1 * (c - t) + l2 * (c - t)^2, its multipliers learnt by gradient ascent,
  # and lambda_l0 and penalty are not used.
  c.target_macs = 0.0
  c.target_params = 0.0
  # Share of the training steps over which the target t falls from 1.
  c.target_warmup = 1 / 3
  # From this share of the epochs on (rounded, and at least the last epoch),
  # the gates are settled for the test-time cost closest to the target from
  # below, and fixed; the weights train on.
  c.fix_gates_after = 0.75
  # Adam's learning rate for the multipliers l1 and l2 (ascent).
  c.multiplier_learning_rate = 0.02
  # Whose gap to the target the multipliers ascend on: "expected", the cost in
  # the L0 term, or "test_time", the network the test counts. The gates descend
  # on the expected cost either way; bounded gates keep it above the test-time one.
  c.multiplier_cost = EXPECTED

  # --- Optimisation -----------------------------------------------------
  c.num_epochs = 180
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4  # AdamW; never applied to the gates' log_alpha.
  # The gates' log_alpha learn at this multiple of learning_rate (CoFiPruning
  # gives its gates a much larger rate than the weights').
  c.gate_lr_scale = 1.0
  # Holds the training gates' log_alpha within [-b, b] after every step, as Louizos et
  # al.'s and CoFiPruning's code do with b = log(100) = 4.6: the L0 term's gradient on a
  # gate shrinks as exp(-|log_alpha|), so a gate far out answers the penalty slowly.
  # 0: unbounded (protocols 1 and 2 ran so). A bound must exceed log(11) = 2.4, where a
  # gate is fully open.
  c.log_alpha_bound = 0.0
  c.lr_milestones = (100, 150)  # epochs at which the lr is multiplied...
  c.lr_factor = 0.1  # ...by this.
  # bfloat16 | float32 | auto (bfloat16 on accelerators, float32 on CPU) |
  # bfloat16_matmuls (float32 activations; the convolutions multiply in
  # bfloat16 and sum in float32, forward and backward: the fastest precision
  # on the CPU of the README's *Speed*).
  # Parameters, optimizer state, BN statistics and the loss stay float32.
  c.compute_dtype = "auto"
  # With the gates fixed (train_gates=False, a mask, a budget's settled gates),
  # a training step computes the kept channels alone (`compact_training`): the
  # masked network's function at the cost of what is kept. False computes every
  # channel and multiplies the pruned ones by 0.
  c.compact_training = True

  # --- Run --------------------------------------------------------------
  # An integer in [0, 2**32): JAX's keys take 32 bits, so 2**32 would train exactly as 0.
  c.seed = 0
  # A workdir whose checkpoint initialises the network weights (and BN
  # statistics); gates start fresh at droprate_init unless train_gates=False.
  c.init_from = ""
  # Which checkpoint of init_from: best (by validation accuracy) or last. A
  # pruning run's best can predate its gates closing; retraining takes last.
  c.init_checkpoint = "best"
  # Training steps per compiled call (fewer host round-trips); a call never
  # crosses an epoch boundary. 0: automatic (`batches.steps_per_call`).
  c.steps_per_call = 0
  c.eval_batch_size = 1000
  # Training metrics, averaged over this many steps, go to TensorBoard and the
  # console (history.jsonl keeps each epoch's mean).
  c.log_every_steps = 100
  # Checkpoints kept besides the best by validation accuracy.
  c.keep_checkpoints = 2
  return c


# Any recipe at a size that trains in seconds on a CPU, as big_vision's configs
# take `runlocal`: `--config=configs/gated.py:runlocal`. 8x8 synthetic images,
# a quarter-width network, two epochs of 14 steps and a console line after
# each. The tests train it; it also tries a command out before its long run.
RUNLOCAL = {
    "dataset": "synthetic",
    "synthetic_image_size": 8,
    "synthetic_num_train": 512,
    "width_multiplier": 0.25,
    "batch_size": 32,
    "eval_batch_size": 64,
    "steps_per_call": 1,  # The CPU default: no loop inside the compiled step.
    "log_every_steps": 1,
    "num_epochs": 2,
    "lr_milestones": (1,),
}


def variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """A recipe's config `c` as `--config=FILE:ARG` asks for it: as it is without an ARG, at
  RUNLOCAL's size for `runlocal`."""
  if arg is None:
    return c
  if arg != "runlocal":
    raise UserError(f"--config=FILE:{arg}: the one variant of a recipe is runlocal")
  c.update(RUNLOCAL)
  return c


DATASETS = ("cifar10", "cifar100", "fashion_mnist", "synthetic")
MODELS = ("googlenet", "resnet", "vgg")
DEFAULT_DEPTHS = {"googlenet": 0, "resnet": 20, "vgg": 11}  # what depth=0 builds
VGG_DEPTHS = (11, 13, 16, 19)  # the keys of vgg.STAGES (this module loads before JAX)
PENALTIES = ("mean_gate", "params", "macs")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "bfloat16_matmuls")
VAL_SPLITS = ("hash", "seeded")
CHECKPOINTS = ("best", "last")
# "" and masks.METHODS (this module loads before JAX); the last ones take mask_from, no target.
MASKS_FROM_RUN = ("decided", "random_widths")
MASKS = ("", "l1_norm", "l1_norm_relative", "random", *MASKS_FROM_RUN)
TARGET_KINDS = ("macs", "params")  # what a budget is a fraction of: config.target_{kind}
EXPECTED, TEST_TIME = "expected", "test_time"
MULTIPLIER_COSTS = (EXPECTED, TEST_TIME)  # the costs whose gap a budget's multipliers ascend on


def depth(c: ml_collections.ConfigDict) -> int:
  """The depth of the network `c` builds (depth=0 read as the model's usual one)."""
  return c.depth or DEFAULT_DEPTHS[c.model]


def network_name(c: ml_collections.ConfigDict) -> str:
  """What the console and the figures call the network: GoogleNet, ResNet-20, VGG-11."""
  name = {"googlenet": "GoogleNet", "resnet": "ResNet", "vgg": "VGG"}[c.model]
  return f"{name}-{depth(c)}" if depth(c) else name


def built(c: ml_collections.ConfigDict, field: str) -> Any:
  """`c`'s value of an ARCHITECTURE_FIELDS `field` as the network it builds reads it:
  gate_reduce only where there are reduce layers to gate (a GoogleNet)."""
  if field == "gate_reduce":
    return bool(c.get(field)) and c.get("model") == "googlenet"
  return c.get(field)


def _depth_problem(c: ml_collections.ConfigDict) -> str | None:
  """Why `c.depth` is not one of `c.model`'s, or None."""
  if c.depth == 0:
    return None
  if c.model == "resnet" and (c.depth < 8 or (c.depth - 2) % 6):
    return (f"depth={c.depth}: a CIFAR ResNet has 6n + 2 layers for n >= 1 (20, 32, 44, 56, 110, "
            "...; 0: 20)")
  if c.model == "vgg" and c.depth not in VGG_DEPTHS:
    return f"depth={c.depth}: a VGG has {', '.join(map(str, VGG_DEPTHS))} layers (0: 11)"
  if c.model == "googlenet":
    return f"depth={c.depth}: the googlenet has one depth (leave depth at 0)"
  return None


# What a run does with its gates (`GatePlan.gates`): none; trained with lambda_l0 times the
# penalty in the loss; trained to a budget, then settled and fixed; init_from's, fixed; a
# one-shot mask of init_from's network, fixed. A fixed gate no longer trains: it acts at its
# test-time value. A settled one was set once for the budget, closed or kept (`budgets.settle`).
NO_GATES, LAMBDA, BUDGET, RETRAIN, MASK = "none", "lambda", "budget", "retrain", "mask"


class Target(NamedTuple):
  """A budget: the kept fraction of the full network's MACs or parameters to end at."""

  kind: str  # one of TARGET_KINDS
  fraction: float


class GatePlan(NamedTuple):
  """What a run does with its gates, resolved once from its config (`gate_plan`)."""

  gates: str  # NO_GATES, LAMBDA, BUDGET, RETRAIN or MASK
  penalty: str  # what the L0 term measures, reported by every run
  lambda_l0: float  # the L0 term's weight in the loss of a LAMBDA run
  target: Target | None  # a BUDGET's, or the cost a MASK keeps channels to
  settle_epoch: int | None  # a BUDGET's first epoch trained with its gates settled and fixed
  mask: str  # a MASK's method
  mask_from: str  # the gated run a MASK from a run takes its gates from
  log_alpha_bound: float = 0.0  # the training gates' |log_alpha| at most; 0: unbounded

  @property
  def fixed_from_start(self) -> bool:
    """Whether the gates are fixed from the first step."""
    return self.gates in (RETRAIN, MASK)


def gate_plan(c: ml_collections.ConfigDict) -> GatePlan:
  """What the run of `c` does with its gates; `validate` refuses the plans it cannot carry out."""
  targets = [Target(kind, c[f"target_{kind}"]) for kind in TARGET_KINDS if c[f"target_{kind}"]]
  target = targets[0] if targets else None
  if c.mask:
    gates = MASK
  elif target:
    gates = BUDGET
  elif not c.train_gates:
    gates = RETRAIN
  else:
    gates = LAMBDA if c.use_gate else NO_GATES
  # Never the first epoch nor past the last: the gates train before they settle, and the tested
  # network meets the budget (`validate` asks such a run for two epochs or more).
  settle_epoch = (min(max(round(c.fix_gates_after * c.num_epochs), 1), c.num_epochs - 1)
                  if gates == BUDGET else None)
  return GatePlan(gates, c.penalty, c.lambda_l0, target, settle_epoch, c.mask, c.mask_from,
                  c.log_alpha_bound)


def validate(c: ml_collections.ConfigDict) -> GatePlan:
  """Refuses values that cannot make a sensible run, before anything is written; the run's plan."""
  def check(ok: bool, message: str) -> None:
    if not ok:
      raise UserError(f"config: {message}")

  check(c.dataset in DATASETS, f"dataset={c.dataset!r} is not one of {', '.join(DATASETS)}")
  check(c.model in MODELS, f"model={c.model!r} is not one of {', '.join(MODELS)}")
  depth_problem = _depth_problem(c)
  check(depth_problem is None, str(depth_problem))
  check(c.penalty in PENALTIES, f"penalty={c.penalty!r} is not one of {', '.join(PENALTIES)}")
  check(c.val_split in VAL_SPLITS,
        f"val_split={c.val_split!r} is not one of {', '.join(VAL_SPLITS)}")
  check(c.compute_dtype in COMPUTE_DTYPES,
        f"compute_dtype={c.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
  check(c.init_checkpoint in CHECKPOINTS,
        f"init_checkpoint={c.init_checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
  check(not c.gate_residual or (c.model == "resnet" and c.use_gate),
        "gate_residual=True gates a ResNet's stage widths: it needs model='resnet' and "
        "use_gate=True")
  check(not c.gate_reduce or c.use_gate,
        "gate_reduce=True gates a GoogleNet's reduce layers: it needs use_gate=True")
  check(c.lambda_l0 >= 0, f"lambda_l0={c.lambda_l0} must be >= 0")
  for kind in TARGET_KINDS:
    target = c[f"target_{kind}"]
    check(0 <= target <= 1, f"target_{kind}={target} must lie in (0, 1] (0: no target)")
  targets = [f"target_{kind}={c[f'target_{kind}']}" for kind in TARGET_KINDS
             if c[f"target_{kind}"]]
  check(len(targets) <= 1, f"{' and '.join(targets)}: set one target, not both")
  check(c.mask in MASKS, f"mask={c.mask!r} is not one of {', '.join(m for m in MASKS if m)}")
  plan = gate_plan(c)
  # init_from's network, whose gates this run does not train: a RETRAIN run's or a MASK's.
  from_init = bool(c.use_gate and not c.train_gates and c.init_from)
  check(c.train_gates or from_init,
        "train_gates=False keeps the gates of a pruned run: it needs use_gate=True and "
        "init_from=WORKDIR_OF_A_GATED_RUN")
  from_run = c.mask in MASKS_FROM_RUN
  check(plan.gates != MASK or from_run or (plan.target and from_init),
        f"mask={c.mask} keeps channels of a trained network up to a budget and fixes them: it "
        "needs init_from=WORKDIR, a target_macs (or target_params), use_gate=True and "
        "train_gates=False")
  check(not from_run or (c.mask_from and not plan.target and from_init),
        f"mask={c.mask} keeps, of init_from's network, the channels (or as many in each layer) "
        "that another run's gates decided, and fixes them: it needs mask_from=WORKDIR_OF_A_GATED_"
        "RUN, init_from=WORKDIR, no target, use_gate=True and train_gates=False")
  check(not c.mask_from or from_run,
        f"mask_from={c.mask_from} makes a mask of a run's gates: it needs mask="
        f"{' or mask='.join(MASKS_FROM_RUN)}")
  check(plan.gates != BUDGET or (c.use_gate and c.train_gates),
        "a target (target_macs, target_params) prunes with trained gates: it needs "
        "use_gate=True and train_gates=True (or a mask)")
  check(plan.gates != BUDGET or c.num_epochs >= 2,
        f"num_epochs={c.num_epochs}: a run pruned to a budget trains its gates, then settles them "
        "for the budget (fix_gates_after) and trains on: it needs num_epochs >= 2")
  check(0 <= c.target_warmup <= 1,
        f"target_warmup={c.target_warmup} must lie in [0, 1] (a share of the steps)")
  check(0 < c.fix_gates_after <= 1,
        f"fix_gates_after={c.fix_gates_after} must lie in (0, 1] (a share of the epochs)")
  check(c.multiplier_cost in MULTIPLIER_COSTS,
        f"multiplier_cost={c.multiplier_cost!r} is not one of {', '.join(MULTIPLIER_COSTS)}")
  check(c.multiplier_learning_rate > 0,
        f"multiplier_learning_rate={c.multiplier_learning_rate} must be > 0")
  check(0 < c.droprate_init < 1, f"droprate_init={c.droprate_init} must lie in (0, 1)")
  check(c.width_multiplier > 0, f"width_multiplier={c.width_multiplier} must be > 0")
  check(c.learning_rate > 0, f"learning_rate={c.learning_rate} must be > 0")
  check(c.gate_lr_scale > 0, f"gate_lr_scale={c.gate_lr_scale} must be > 0")
  check(c.log_alpha_bound == 0 or c.log_alpha_bound > OPEN_AT,
        f"log_alpha_bound={c.log_alpha_bound} must be 0 (unbounded) or more than log(11) = "
        f"{OPEN_AT:.3f}, where a gate is fully open")
  check(c.weight_decay >= 0, f"weight_decay={c.weight_decay} must be >= 0")
  check(c.lr_factor > 0, f"lr_factor={c.lr_factor} must be > 0")
  check(all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in c.lr_milestones),
        f"lr_milestones={tuple(c.lr_milestones)} must be epochs (integers >= 0)")
  check(c.steps_per_call >= 0, f"steps_per_call={c.steps_per_call} must be >= 0 (0: automatic)")
  for field in ("num_epochs", "batch_size", "eval_batch_size", "log_every_steps",
                "keep_checkpoints", "synthetic_image_size"):
    check(c[field] >= 1, f"{field}={c[field]} must be >= 1")
  check(c.synthetic_num_train >= 10,
        f"synthetic_num_train={c.synthetic_num_train} must be >= 10 (a tenth validates)")
  check(isinstance(c.seed, int) and not isinstance(c.seed, bool) and 0 <= c.seed < 2**32,
        f"seed={c.seed} must be an integer in [0, 2**32)")
  check(c.max_train_examples >= 0, f"max_train_examples={c.max_train_examples} must be >= 0")
  return plan
