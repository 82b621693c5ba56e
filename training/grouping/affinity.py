"""TAG (Fifty et al., NeurIPS 2021): inter-task affinity from lookahead updates of the shared trunk.

For one batch and each task i, the shared parameters take one step along task i's gradient only,
every task's loss is recomputed on the same batch, and

    Z(i -> j) = 1 - L_j(theta_s - step_i, theta_j) / L_j(theta_s, theta_j)

is how much that step helped (Z > 0) or hurt (Z < 0) task j. Then everything is put back exactly
(parameters, BatchNorm running buffers, gradients, optimizer state, RNG), so recording affinities
never changes training: `TagRecorder` hooks the trainer every k micro-batches and averages Z.

The step (`update`):

- "sgd" (default): theta_s - lr * grad L_i, with the optimizer's current learning rate for each
  parameter: Fifty et al.'s definition (their Eq. 1). For small steps Z(i -> j) ~= lr * g_i.g_j / L_j
  (tested), i.e. a loss-normalised gradient alignment; the selection is invariant to the scale
  of Z, so the small step size of an Adam-tuned learning rate does not matter.
- "optimizer": one step of the trainer's own optimizer (e.g. AdamW, from its current moments)
  with only grad L_i on the shared parameters. It measures the step training would take, but an
  Adam step is 90 % the momentum accumulated from *all* tasks (beta1 = 0.9), the same for every
  i, so Z(i -> j) mostly measures the joint step and every row looks alike; that biases the
  selection toward sharing. Kept for comparison; state is restored exactly in both modes.

Lookahead losses are computed in the model's training mode (BatchNorm on batch statistics, as in
the training forward); the running statistics the extra forwards move are restored.

Group selection: a task t in group G scores the mean of Z(j -> t) over the other members j
(Fifty et al.); a task alone scores 0 (no transfer). With loss = -score this is exactly the
set-cover search of `search.py` (overlapping groups allowed, a task counts its best group), run
exhaustively under the same cost budget as Standley's method.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from training.grouping.higher_order import all_groups
from training.grouping.search import Candidate

UPDATES = ("sgd", "optimizer")


def _lr_of(optimizer: Optional[torch.optim.Optimizer], params: Sequence[nn.Parameter],
           lr: Optional[float]) -> List[float]:
    if lr is not None:
        return [float(lr)] * len(params)
    if optimizer is None:
        raise ValueError("lookahead with update='sgd' needs lr or the optimizer (for its current lr)")
    by_param = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in by_param]
    if missing:
        raise ValueError(f"{len(missing)} shared parameters are not in the optimizer")
    return [float(by_param[id(p)]) for p in params]


def lookahead_affinity(compute_losses: Callable[[], Mapping[str, torch.Tensor]], shared_params: Sequence[nn.Parameter],
                       modules: Sequence[nn.Module] = (), optimizer: Optional[torch.optim.Optimizer] = None,
                       lr: Optional[float] = None, update: str = "sgd"):
    """One batch's affinity matrix. `compute_losses()` runs the forward pass on the batch and
    returns {task: scalar loss}; `modules` are the modules whose buffers (BatchNorm statistics)
    it may move. Returns (Z as a float64 numpy array [i, j] = Z(i -> j), task order, base losses).
    Parameters, buffers, `.grad`s, optimizer state and the torch RNG are restored exactly."""
    if update not in UPDATES:
        raise ValueError(f"unknown lookahead update {update!r} (known: {', '.join(UPDATES)})")
    if update == "optimizer" and optimizer is None:
        raise ValueError("update='optimizer' needs the optimizer")
    shared = [p for p in shared_params if p.requires_grad]
    rng = torch.get_rng_state()
    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    saved_params = [p.detach().clone() for p in shared]
    step_sizes = _lr_of(optimizer, shared, lr) if update == "sgd" else None

    def restore_buffers():
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)

    losses = compute_losses()
    names = list(losses)
    base = {t: float(v.detach()) for t, v in losses.items()}
    T = len(names)
    # every task's gradient first: the graph holds the BN buffers, which are restored only after
    task_grads = []
    for i, task in enumerate(names):
        grads = torch.autograd.grad(losses[task], shared, retain_graph=i < T - 1, allow_unused=True)
        task_grads.append([torch.zeros_like(p) if g is None else g.detach() for p, g in zip(shared, grads)])
    del losses
    restore_buffers()
    z = np.zeros((T, T), dtype=np.float64)
    for i, grads in enumerate(task_grads):
        if update == "sgd":
            with torch.no_grad():
                for p, g, step in zip(shared, grads, step_sizes):
                    p.sub_(g, alpha=step)
        else:
            _optimizer_step(optimizer, shared, grads)
        with torch.no_grad():
            after = compute_losses()
        for j, other in enumerate(names):
            z[i, j] = 1.0 - float(after[other]) / base[other]
        with torch.no_grad():
            for p, value in zip(shared, saved_params):
                p.copy_(value)
        restore_buffers()
    torch.set_rng_state(rng)
    return z, names, base


def _optimizer_step(optimizer: torch.optim.Optimizer, shared: Sequence[nn.Parameter],
                    grads: Sequence[torch.Tensor]) -> None:
    """One optimizer step with `grads` on `shared` only, then the optimizer's state (and every
    parameter's .grad) as it was. The parameters stay moved (the caller restores them)."""
    all_params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_grads = [p.grad for p in all_params]
    shared_ids = {id(p) for p in shared}
    saved_state = {}
    for p in shared:
        if p in optimizer.state:
            saved_state[p] = {k: (v.detach().clone() if torch.is_tensor(v) else v)
                              for k, v in optimizer.state[p].items()}
    flags = {k: optimizer.__dict__[k] for k in ("_opt_called",) if k in optimizer.__dict__}
    try:
        for p in all_params:
            p.grad = None
        for p, g in zip(shared, grads):
            p.grad = g.clone()
        optimizer.step()
    finally:
        for p in all_params:
            if id(p) in shared_ids:
                if p in saved_state:
                    optimizer.state[p] = {k: (v.clone() if torch.is_tensor(v) else v)
                                          for k, v in saved_state[p].items()}
                else:
                    optimizer.state.pop(p, None)
        for p, g in zip(all_params, saved_grads):
            p.grad = g
        for k in ("_opt_called",):
            if k in flags:
                optimizer.__dict__[k] = flags[k]
            else:
                optimizer.__dict__.pop(k, None)


class TagRecorder:
    """A `Trainer.batch_hooks` hook: the lookahead affinity every `every` training micro-batches,
    averaged over training (`mean()`), saved as JSON (`save`)."""

    def __init__(self, every: int = 5, update: str = "sgd", lr: Optional[float] = None):
        if every < 1:
            raise ValueError("every must be >= 1")
        if update not in UPDATES:
            raise ValueError(f"unknown lookahead update {update!r} (known: {', '.join(UPDATES)})")
        self.every, self.update, self.lr = every, update, lr
        self.tasks: List[str] = []
        self.calls = 0
        self.total: Optional[np.ndarray] = None
        self.count = 0
        self.trace: List[dict] = []  # every recorded step's matrix

    def install(self, trainer) -> "TagRecorder":
        self.tasks = list(trainer.tasks)
        trainer.batch_hooks.append(self)
        return self

    def __call__(self, trainer, batch: Mapping[str, torch.Tensor]) -> None:
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        model, tasks = trainer.model, trainer.tasks
        opt = trainer.recipe.optim
        amp = ((lambda: torch.autocast(trainer.device.type, dtype=trainer.amp_dtype)) if opt.amp
               else contextlib.nullcontext)
        image01 = batch["image"].float() / 255.0

        def compute_losses():
            with amp():
                preds = model(image01)
            if opt.amp:
                preds = {t: _float(v) for t, v in preds.items()}
            return {t: task.loss(preds[t], batch) for t, task in tasks.items()}

        z, names, base = lookahead_affinity(compute_losses, trainer.shared_params, modules=[model],
                                            optimizer=trainer.optimizer, lr=self.lr, update=self.update)
        self.add(z, names, step=trainer.step, epoch=trainer.epoch, base=base)

    def add(self, z: np.ndarray, names: Sequence[str], step: int = 0, epoch: int = 0,
            base: Optional[Mapping[str, float]] = None) -> None:
        if not self.tasks:
            self.tasks = list(names)
        if list(names) != self.tasks:
            raise ValueError(f"task order {list(names)} differs from {self.tasks}")
        self.total = z.copy() if self.total is None else self.total + z
        self.count += 1
        self.trace.append({"step": step, "epoch": epoch, "z": z.tolist(), "loss": dict(base or {})})

    def mean(self) -> np.ndarray:
        if not self.count:
            raise ValueError("no affinity recorded yet")
        return self.total / self.count

    def to_dict(self) -> dict:
        return {"tasks": self.tasks, "every": self.every, "update": self.update, "lr": self.lr, "count": self.count,
                "calls": self.calls, "affinity": self.mean().tolist() if self.count else None,
                "note": "affinity[i][j] = Z(i -> j), mean over recorded steps", "trace": self.trace}

    def load_dict(self, doc: Mapping) -> None:
        """Continues from a saved recorder (a resumed run)."""
        self.tasks, self.calls, self.trace = list(doc["tasks"]), int(doc["calls"]), list(doc["trace"])
        self.count = len(self.trace)
        self.total = np.sum([np.asarray(r["z"]) for r in self.trace], axis=0) if self.trace else None

    def save(self, path, epoch: Optional[int] = None) -> None:
        """Atomic JSON; `epoch` (completed epochs) lets a resumed run continue the average."""
        path = Path(path)
        doc = self.to_dict()
        if epoch is not None:
            doc["epoch"] = epoch
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)


class TagHook:
    """Job-engine hook (`training.experiments.jobs`): records TAG affinities during a run with a
    `TagRecorder(**options)`, saved to the run's affinity.json after every epoch; a resumed run
    continues the saved average when it was saved at the epoch the run resumes from."""

    def __init__(self, **options):
        self.recorder = TagRecorder(**options)
        self.path: Optional[Path] = None

    def start(self, trainer, out_dir: Path, done_epochs: int) -> None:
        self.recorder.install(trainer)
        self.path = Path(out_dir) / "affinity.json"
        if done_epochs and self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("epoch") == done_epochs:
                self.recorder.load_dict(saved)

    def epoch_end(self, trainer, epoch: int, record: dict, test_loader) -> None:
        self.recorder.save(self.path, epoch=epoch)


def _float(value):
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_float(v) for v in value)
    return value


def group_scores(affinity: np.ndarray, tasks: Sequence[str], group: Sequence[str]) -> Dict[str, float]:
    """Each member t's affinity to `group`: mean of Z(j -> t) over the other members (0 alone)."""
    index = {t: i for i, t in enumerate(tasks)}
    out = {}
    for t in group:
        others = [j for j in group if j != t]
        out[t] = float(np.mean([affinity[index[j], index[t]] for j in others])) if others else 0.0
    return out


def tag_candidates(affinity: np.ndarray, tasks: Sequence[str], cost: Callable[[Sequence[str]], float],
                   max_size: int = 0) -> List[Candidate]:
    """Every group as a search candidate with loss = -score, so minimising total loss maximises
    the total affinity; `cost(group)` is the group network's cost."""
    out = []
    for group in all_groups(list(tasks), max_size):
        scores = group_scores(affinity, tasks, group)
        out.append(Candidate(name="+".join(group), tasks=tuple(group), cost=float(cost(group)),
                             losses={t: -s for t, s in scores.items()}, info={"scores": scores}))
    return out
