"""--mode=test and --mode=export: what a trained run's checkpoint is worth on the test split,
and its compact network.

The checkpoint is the best by validation accuracy unless `checkpoint="last"`: a
pruning run whose gates close late may validate best before they do.
"""

from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from l0jax import accounting, checkpoints, data, evaluator, export, onnx_export, train, workdirs
from l0jax import run_config


def restore(workdir: str, checkpoint: str = "best",
            **overrides) -> tuple[train.Run, train.TrainState, int]:
  """The run in `workdir` (its saved config, with `overrides`) at `checkpoint` (best or last)."""
  config = workdirs.load_config(workdir)
  config.update(overrides)
  mngr, step = checkpoints.chosen_step(workdir, checkpoint)
  run = train.setup(config)
  state = train.initial_state(run)
  state = checkpoints.restore_step(mngr, step, state)
  return run, state, step


def gated_network(run: train.Run, state: train.TrainState) -> nnx.Module:
  return nnx.merge(run.network.graphdef, state.params, state.batch_stats)


def cost_report(run: train.Run, net: nnx.Module) -> dict:
  return accounting.report(run.network.graph, run.network.graph.log_alphas(net))


def pruned_by(plan: run_config.GatePlan) -> dict[str, Any]:
  """What set the run's cost, as test_metrics.json records it: the target of a budget or a mask
  (`target_kind`, `target`), the run whose gates a mask was made from (`mask`, `mask_from`), or
  the L0 term's weight where that term was in the loss."""
  if plan.target:
    return {"target_kind": plan.target.kind, "target": plan.target.fraction}
  if plan.mask_from:
    return {"mask": plan.mask, "mask_from": plan.mask_from}
  if plan.gates == run_config.LAMBDA:
    return {"lambda_l0": plan.lambda_l0}
  return {}  # no gates, or init_from's gates fixed: this run pruned nothing


def test_checkpoint(workdir: str, checkpoint: str = "best") -> dict:
  """Evaluates a checkpoint on the test split; prints a summary, writes test_metrics.json."""
  run, state, step = restore(workdir, checkpoint)
  ds = run.dataset
  evaluate_test = evaluator.Evaluator(run.network, ds.test_images, ds.test_labels,
                                      run.config.eval_batch_size, run.mesh)
  metrics = evaluate_test(state.params, state.batch_stats)
  costs = cost_report(run, gated_network(run, state))
  result = {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
            "checkpoint": checkpoint, "checkpoint_step": step, "dataset": ds.name,
            "use_gate": run.config.use_gate, **pruned_by(run.plan), **costs}
  if workdirs.is_primary_process():
    workdirs.write_test_metrics(workdir, result)
    print(f"{workdir}: {ds.name} test accuracy {metrics['accuracy']:.4f} "
          f"({len(ds.test_images)} images, {checkpoint} checkpoint: step {step})")
    print(accounting.format_table(costs))
  return result


def export_checkpoint(workdir: str, checkpoint: str = "best",
                      with_onnx: bool | None = None) -> dict:
  """Builds the compact network from a checkpoint, checks it on the test split, saves it.

  `with_onnx`: whether to add its ONNX model; None adds it if the onnx extra is installed.
  """
  if with_onnx is None:
    with_onnx = onnx_export.available()
  if with_onnx:
    onnx_export.require()  # refused at once, not after restoring and checking the network
  # The compact network is checked in float32, whatever the run trained in.
  run, state, step = restore(workdir, checkpoint, compute_dtype="float32")
  if not run.config.use_gate:
    logging.info("%s has no gates: the compact network is the whole network, BN folded.", workdir)
  ds = run.dataset
  net = gated_network(run, state)
  params = export.compact_params(net, run.network.graph)
  images = np.asarray(jax.jit(lambda x: data.normalize(x, ds.mean, ds.std))(ds.test_images))
  result = export.verify(net, run.network.graph, params, images, ds.test_labels,
                         run.config.eval_batch_size)
  result.update(checkpoint=checkpoint, checkpoint_step=step)
  if workdirs.is_primary_process():  # The others computed the same.
    export_dir = epath.Path(workdir) / workdirs.EXPORT_DIR
    export.save(export_dir, run.network.graph, params, ds.test_images[:8], ds.mean, ds.std,
                {"dataset": ds.name, "source_workdir": str(epath.Path(workdir).resolve()),
                 "checkpoint_step": step}, result, with_onnx)
    print(f"{export_dir}: compact network with {result['params_compact']:,} parameters; "
          f"test accuracy {result['test_accuracy_compact']:.4f} "
          f"(gated {result['test_accuracy_gated']:.4f}), "
          f"largest logit difference {result['max_abs_logit_diff']:.2e}")
    if with_onnx:
      print(f"{export_dir / onnx_export.FILE}: the same network, for onnxruntime")
    elif not onnx_export.available():
      print(f"no {onnx_export.FILE}: the onnx extra is not installed ({onnx_export.EXTRA})")
  return result
