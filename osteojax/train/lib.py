"""Shared training machinery: state, optimiser, the one pmapped step builder, checkpoints, loop.

Every task supplies a pure `loss_fn(params, batch_stats, batch, rng, step) -> (loss, (new
batch_stats, metrics))` and a host batch maker; this module owns the rest:
- `make_train_step`: `pmap` over local devices (axis 'batch'), gradients / loss / metrics /
  batch statistics averaged with `lax.pmean`, one RNG per step (`fold_in(rng, step)`, the same
  on every device). Per-example randomness comes from `example_keys`, keyed by the example's
  *global* index, so 1 device and N devices draw the same augmentations for the same batch.
- `Checkpoints`: orbax CheckpointManager in `<workdir>/checkpoints`; restore tries the newest
  step first and falls back to older ones when a checkpoint is broken.
- `fit`: the loop: resume, prefetching input, progress with step time and ETA, TensorBoard,
  a clear stop on a non-finite loss that keeps the last good checkpoint.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax import lax

from osteojax.data import io as dio
from osteojax.errors import ConfigError
from osteojax.train import writers

AXIS = 'batch'


class TrainState(train_state.TrainState):
  """flax TrainState + batch statistics; `create_with_ema` gives an EmaTrainState."""
  batch_stats: Any = None

  @classmethod
  def create_with_ema(cls, *, ema_decay: float = 0.0, **kw):
    """A TrainState, or with ema_decay > 0 an EmaTrainState (checkpoints without an average
    keep the structure they always had, so older runs still restore)."""
    if not ema_decay:
      return cls.create(**kw)
    state = EmaTrainState.create(**kw)
    return state.replace(ema={'params': state.params, 'batch_stats': state.batch_stats},
                         ema_decay=float(ema_decay))

  def averaged(self) -> dict:
    """{'params', 'batch_stats'} to evaluate with (the moving average where there is one)."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


class EmaTrainState(TrainState):
  """TrainState + an exponential moving average of params and batch statistics, updated by the
  step builder after every optimiser step with weight ema_decay on the past (Polyak)."""
  ema: Any = None
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

  def averaged(self) -> dict:
    return dict(self.ema)


def create_state(*, apply_fn, params, tx, batch_stats=None, ema_decay: float = 0.0):
  """TrainState.create_with_ema as one compiled function: eagerly, the optimiser's init
  compiles each of its small ops on its own (about 30 compilations per state)."""
  return jax.jit(lambda p, s: TrainState.create_with_ema(
      apply_fn=apply_fn, params=p, tx=tx, batch_stats=s, ema_decay=ema_decay))(params, batch_stats)


class NonFiniteLoss(FloatingPointError):
  """Raised when the loss or the parameters stop being finite."""


def make_schedule(c, total_steps: int):
  """Linear warm-up from 0 to c.lr over c.warmup_steps, then c.decay ('cosine'|'linear') to 0."""
  warm = max(int(c.warmup_steps), 1)
  rest = max(total_steps - warm, 1)
  up = optax.linear_schedule(0.0, c.lr, warm)
  if c.decay == 'cosine':
    down = optax.cosine_decay_schedule(c.lr, rest)
  elif c.decay == 'linear':
    down = optax.linear_schedule(c.lr, 0.0, rest)
  else:
    raise ConfigError(f'unknown decay {c.decay!r} (cosine or linear)')
  return optax.join_schedules([up, down], [warm])


def make_optimizer(c, total_steps: int):
  """AdamW (the paper: betas 0.9/0.999, weight decay 0.1) on the warm-up/decay schedule."""
  return optax.adamw(make_schedule(c, total_steps), b1=c.b1, b2=c.b2,
                     weight_decay=c.weight_decay)


def example_keys(rng, n_local: int, axis: str = AXIS):
  """Per-example keys [n_local, 2] inside pmap, keyed by the global example index."""
  start = lax.axis_index(axis) * n_local
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(start + jnp.arange(n_local))


def make_train_step(loss_fn: Callable, axis: str = AXIS,
                    post_update: Callable | None = None):
  """The one pmapped train step of the project: (state, batch, rng) -> (state, metrics).

  loss_fn(params, batch_stats, batch, rng, step) -> (loss, (batch_stats, metrics dict)).
  post_update(params) -> params runs after the optimiser (e.g. prototype normalisation).
  metrics gets 'loss' and 'finite' (1.0 when loss and gradients are finite). A state with an
  `ema` gets it updated after the optimiser step.
  """

  def step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)

    def f(params):
      return loss_fn(params, state.batch_stats, batch, rng, state.step)

    (loss, (stats, aux)), grads = jax.value_and_grad(f, has_aux=True)(state.params)
    grads, loss, aux, stats = lax.pmean((grads, loss, aux, stats), axis)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    state = state.apply_gradients(grads=grads, batch_stats=stats)
    if post_update is not None:
      state = state.replace(params=post_update(state.params))
    if isinstance(state, EmaTrainState):
      d = state.ema_decay
      state = state.replace(ema=jax.tree_util.tree_map(
          lambda e, x: d * e + (1 - d) * x, state.ema,
          {'params': state.params, 'batch_stats': state.batch_stats}))
    return state, {'loss': loss, 'finite': finite.astype(jnp.float32), **aux}

  return jax.pmap(step, axis_name=axis, in_axes=(0, 0, None), donate_argnums=0)


# The identity as a pmapped program: its outputs carry the sharding a pmapped step's outputs
# have. copy() keeps each output a new buffer (an output that is its input keeps the input's).
_pmap_identity = jax.pmap(lambda t: jax.tree_util.tree_map(lambda x: x.copy(), t),
                          axis_name=AXIS)


def replicate(tree):
  """flax.jax_utils.replicate(tree), laid out as a pmapped step's outputs are.

  The first call of a step on flax's replicas would otherwise compile it a second time at the
  next call: the inputs' sharding (over device_put's mesh axis) is part of what a pmapped
  program is compiled for, and the step's own outputs come back on the pmap axis.
  """
  return _pmap_identity(flax.jax_utils.replicate(tree))


def shard(batch):
  """Host batch [B, ...] -> [local_devices, B // local_devices, ...]."""
  n = jax.local_device_count()

  def f(x):
    if x.shape[0] % n:
      raise ValueError(f'batch of {x.shape[0]} does not split over {n} devices')
    return x.reshape((n, -1) + x.shape[1:])

  return jax.tree_util.tree_map(f, batch)


def host_indices(indices: np.ndarray) -> np.ndarray:
  """This host's contiguous share of a global batch's example indices (all of it on 1 host).

  Hosts take consecutive blocks, so device d of host h holds the same examples as in a
  single-host run with the same number of devices: the global batch order is unchanged.
  """
  n = jax.process_count()
  if len(indices) % (n * jax.local_device_count()):
    raise ValueError(f'global batch {len(indices)} does not split over {jax.device_count()} '
                     f'devices')
  k = len(indices) // n
  return indices[jax.process_index() * k:(jax.process_index() + 1) * k]


def primary_first(fn: Callable[[], Any], name: str) -> Any:
  """fn() on process 0, then on the others once it has finished (all wait at a barrier).

  For work whose result other processes read from the shared filesystem (generating a data
  set, building a texture pool): process 0 makes it, the others find it cached. One process:
  just fn().
  """
  out = primary_only(fn, name)
  return out if jax.process_index() == 0 else fn()


BARRIER_TIMEOUT_S = 24 * 3600     # process 0 may generate a paper-size data set meanwhile
_barriers = itertools.count()


def barrier(name: str) -> None:
  """All processes wait here for each other (the coordination service's barrier, not a device
  collective: gloo's first collective gives up after 30 s, too short for process 0 to build a
  data set). A process that dies is reported by the service's heartbeat, so a crash stops the
  others instead of leaving them here until BARRIER_TIMEOUT_S."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed
  distributed.global_state.client.wait_at_barrier(f'osteojax:{name}:{next(_barriers)}',
                                                  BARRIER_TIMEOUT_S * 1000)


def primary_only(fn: Callable[[], Any], name: str) -> Any:
  """fn() on process 0 alone (evaluation, reports: one writer), the others waiting for it
  at a barrier so that no process leaves the job while another still works. One process:
  just fn(). Returns fn's result on process 0, None elsewhere."""
  out = fn() if jax.process_index() == 0 else None
  barrier(name)
  return out


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Example indices of global batch `step`: epochs of seeded permutations, in order.

  A function of (n, batch_size, seed, step) alone, so a resumed run sees the same batches.
  """
  pos = step * batch_size + np.arange(batch_size)
  epochs = pos // n
  out = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(n)
    sel = epochs == e
    out[sel] = perm[pos[sel] % n]
  return out


class Prefetch:
  """Makes host batches for steps [start, stop) in a background thread, `depth` ahead."""

  def __init__(self, make_batch: Callable[[int], Any], start: int, stop: int, depth: int = 2):
    self._q = queue.Queue(maxsize=depth)
    self._t = threading.Thread(target=self._run, args=(make_batch, start, stop), daemon=True)
    self._t.start()

  def _run(self, make_batch, start, stop):
    for step in range(start, stop):
      try:
        self._q.put((step, make_batch(step), None))
      except Exception as e:  # surfaced in the training thread
        self._q.put((step, None, e))
        return

  def __next__(self):
    step, batch, err = self._q.get()
    if err is not None:
      raise err
    return step, batch


class Checkpoints:
  """orbax CheckpointManager in `<workdir>/checkpoints`, resuming from the newest good step."""

  def __init__(self, workdir: str, max_to_keep: int = 3, every: int = 100,
               this_process_only: bool = False):
    """this_process_only: a manager of this process alone (reading a trained run inside one
    process of several, e.g. evaluation on process 0); otherwise all processes save and
    restore together (orbax's cooperative checkpointing)."""
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.every = every
    options = dict(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    if this_process_only and jax.process_count() > 1:
      i = jax.process_index()
      os.makedirs(self.directory, exist_ok=True)   # orbax creates it only for all processes
      options.update(create=False, multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=i, active_processes={i}, barrier_sync_key_prefix=f'process{i}'))
    self.mngr = ocp.CheckpointManager(self.directory,
                                      options=ocp.CheckpointManagerOptions(**options))

  def steps(self) -> list:
    return sorted(self.mngr.all_steps())

  def _restore(self, step, args):
    """(restored, step) of `step`, or of the newest readable checkpoint (None, 0 when none).

    A truncated or corrupt checkpoint is reported and the previous one tried; an explicit step
    that is absent raises FileNotFoundError, one that is unreadable its own error."""
    if step is not None:
      if step not in self.mngr.all_steps():
        raise FileNotFoundError(f'no checkpoint of step {step} in {self.directory}')
      return self.mngr.restore(step, args=args), step
    for s in sorted(self.mngr.all_steps(), reverse=True):
      try:
        return self.mngr.restore(s, args=args), s
      except Exception as e:  # a truncated or corrupt checkpoint: say so, use the previous
        logging.warning('checkpoint %d in %s is unreadable (%s: %s); trying an older one',
                        s, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
    return None, 0

  def restore(self, state, step: int | None = None):
    """(state, step) of the newest readable checkpoint, or (state, 0) when there is none.

    step: that checkpoint only (FileNotFoundError when it is not there or unreadable)."""
    restored, got = self._restore(step, ocp.args.StandardRestore(state))
    return (restored, got) if got else (state, 0)

  def restore_variables(self, step: int | None = None):
    """({'params', 'batch_stats'} as numpy trees, step) of the newest readable checkpoint (or
    `step`), read without a template: no model or optimiser needed. (None, 0) when none."""
    tree, got = self._restore(step, ocp.args.StandardRestore())
    if not got:
      return None, 0
    return {'params': tree['params'], 'batch_stats': tree.get('batch_stats') or {}}, got

  def save(self, step: int, state, force: bool = False):
    if force or step % self.every == 0:
      self.mngr.save(step, args=ocp.args.StandardSave(state), force=force)

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()


class ValidationHistory:
  """Validation metrics of a run, kept in `<workdir>/validation.json`, and its best checkpoint.

  `record(step, metrics, state)` saves the state in `<workdir>/best/checkpoints` when
  metrics['score'] is the best so far (higher is better), then writes the history atomically.
  `truncate(step)` (on resume) forgets what came after the last regular checkpoint, so that the
  history, the best checkpoint and the training state always agree.
  """

  FILE = 'validation.json'

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, self.FILE)
    self.best = Checkpoints(os.path.join(workdir, 'best'), max_to_keep=2)
    self.entries = []
    if os.path.exists(self.path):
      with open(self.path, encoding='utf-8') as f:
        self.entries = json.load(f)['entries']

  def truncate(self, step: int):
    self.entries = [e for e in self.entries if e['step'] <= step]
    for s in self.best.mngr.all_steps():
      if s > step:
        self.best.mngr.delete(s)

  def best_entry(self):
    return max(self.entries, key=lambda e: e['score']) if self.entries else None

  def record(self, step: int, metrics: dict, state):
    best = self.best_entry()
    if best is None or metrics['score'] > best['score']:
      self.best.save(step, state, force=True)
      self.best.mngr.wait_until_finished()
    self.entries.append({'step': int(step), **{k: float(v) for k, v in metrics.items()}})
    if jax.process_index() == 0:
      dio.atomic_write_text(self.path, json.dumps(
          {'entries': self.entries, 'best_step': self.best_entry()['step']}, indent=1))

  def restore_best(self, state):
    """(state, step) of the best checkpoint (the state unchanged and 0 when there is none)."""
    return self.best.restore(state)

  def close(self):
    self.best.close()


def _all_finite(tree) -> bool:
  return all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree))


def fit(*, workdir: str, state: TrainState, loss_fn: Callable, make_batch: Callable[[int], Any],
        total_steps: int, seed: int, batch_size: int, log_every: int = 10,
        ckpt_every: int = 100, max_to_keep: int = 3, post_update: Callable | None = None,
        lr_fn: Callable | None = None, name: str = 'train',
        eval_fn: Callable | None = None, eval_every: int = 0) -> TrainState:
  """Train `state` for total_steps global steps, resuming from <workdir>/checkpoints.

  make_batch(step) -> host batch (pytree of numpy [batch_size, ...]) for global step `step`.
  eval_fn(state) -> metrics dict with 'score' (higher is better), run every eval_every steps
  and at the end on the host state; the history goes to <workdir>/validation.json and the best
  state to <workdir>/best (ValidationHistory); each evaluation also saves a checkpoint.
  Returns the final (unreplicated) state, or with eval_fn the best one.
  """
  writer = writers.create_writer(workdir)
  ckpt = Checkpoints(workdir, max_to_keep, ckpt_every)
  history = ValidationHistory(workdir) if eval_fn is not None else None
  template = state
  state, start = ckpt.restore(state)
  if history is not None:
    history.truncate(start)
  if start:
    print(f'[{name}] resumed from step {start} ({ckpt.directory})', flush=True)
  p_state = replicate(state)
  p_step = make_train_step(loss_fn, post_update=post_update)
  rng = jax.random.PRNGKey(seed)
  batches = Prefetch(make_batch, start, total_steps)
  t_last, s_last, t0 = time.time(), start, time.time()
  for step in range(start, total_steps):
    _, batch = next(batches)
    p_state, metrics = p_step(p_state, shard(batch), rng)
    done = step + 1
    if done % log_every == 0 or done == total_steps or done % ckpt_every == 0:
      m = jax.device_get(flax.jax_utils.unreplicate(metrics))
      if not (np.isfinite(m['loss']) and m['finite'] == 1.0):
        ckpt.close()
        raise NonFiniteLoss(
            f'[{name}] non-finite loss or gradients at step {done} (loss={m["loss"]}); '
            f'stopped; the last good checkpoint in {ckpt.directory} is kept')
      now = time.time()
      step_time = (now - t_last) / max(done - s_last, 1)
      t_last, s_last = now, done
      scalars = {k: float(v) for k, v in m.items() if k != 'finite'}
      scalars.update(step_time_s=step_time, examples_per_s=batch_size / max(step_time, 1e-9))
      if lr_fn is not None:
        scalars['learning_rate'] = float(lr_fn(done))
      writer.write_scalars(done, scalars)
      eta = step_time * (total_steps - done)
      print(f'[{name}] step {done}/{total_steps} loss {scalars["loss"]:.4f} '
            f'{step_time:.3f} s/step {scalars["examples_per_s"]:.1f} ex/s '
            f'ETA {eta / 60:.1f} min', flush=True)
    evaluate = history is not None and (done % eval_every == 0 or done == total_steps)
    if done % ckpt_every == 0 or done == total_steps or evaluate:
      host_state = jax.device_get(flax.jax_utils.unreplicate(p_state))
      if not bool(_all_finite(host_state.params)):
        ckpt.close()
        raise NonFiniteLoss(f'[{name}] parameters became non-finite by step {done}; stopped; '
                            f'the last good checkpoint in {ckpt.directory} is kept')
      if evaluate:
        te = time.time()
        m = eval_fn(host_state)
        writer.write_scalars(done, {f'valid_{k}': v for k, v in m.items()})
        history.record(done, m, host_state)
        print(f'[{name}] step {done} validation ' + ' '.join(
            f'{k} {float(v):.4f}' for k, v in m.items()) + f' (best: step '
            f'{history.best_entry()["step"]}; {time.time() - te:.1f} s)', flush=True)
      ckpt.save(done, host_state, force=done == total_steps or evaluate)
  writer.flush()
  ckpt.close()
  print(f'[{name}] done: {total_steps - start} steps in {(time.time() - t0) / 60:.1f} min',
        flush=True)
  if history is None:
    return flax.jax_utils.unreplicate(p_state)
  best, step = history.restore_best(template)
  history.close()
  if step == 0:
    raise FileNotFoundError(f'[{name}] no best checkpoint in {history.best.directory}')
  print(f'[{name}] best validation score {history.best_entry()["score"]:.4f} at step {step}',
        flush=True)
  return best
