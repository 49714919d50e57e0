"""Head training on cached features: linear, MLP (gradient) and ridge (closed form).

Gradient heads train in float32 (mixed precision pays off in the backbone
pass, not on cached features) with AdamW (the runtime's :class:`~edgetl.runtime.learning.learners.Adam`,
which the device's ``sgd`` learner uses too), label smoothing, a cosine schedule
and early stopping on validation accuracy.  Their inputs are divided by their root mean square
(one number, measured on the training rows, folded into the first layer's weights afterwards): Adam moves each
weight by about the learning rate per step, so without it the epochs a head needs grow with the inverse scale of
its features, and unit-length text embeddings (entries about 1/sqrt(d)) left the linear head short of
convergence in its 30 epochs.  With ``--train-last N`` the unfrozen tail of
the backbone trains together with the head, on the cached activations at the
freeze boundary.  Whatever is trained, the result is a numpy head from
:mod:`edgetl.runtime.bundle.heads`, which is what ships; ridge is the very same
implementation the device uses.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from edgetl.runtime.bundle.heads import Head, LinearHead, MLPHead, RidgeHead
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.learning.learners import Adam
from edgetl.runtime.metrics import top1_accuracy
from edgetl.runtime.progress import ProgressFactory, silent_progress

from .extract import ComputeDevice


@dataclass(frozen=True)
class HeadConfig:
    """Settings of head training (recorded in the run manifest).

    ``scale_inputs`` (gradient heads): train on the features divided by their root mean square, so that ``lr``
    means the same for unit-length text embeddings as for image features; the factor is folded into the
    exported weights (the head's form is unchanged).  False trains on the features as they are (edgetl 0.6)."""

    kind: str = "linear"
    epochs: int = 30
    lr: float = 3e-3
    tail_lr: float = 3e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    batch_size: int = 64
    patience: int = 10
    hidden: int = 256
    dropout: float = 0.2
    seed: int = 0
    scale_inputs: bool = True

    def __post_init__(self) -> None:
        if self.kind not in HEAD_TRAINERS:
            raise ConfigError(f"unknown head '{self.kind}'; choose one of {', '.join(HEAD_TRAINERS)}")
        if self.epochs < 1:
            raise ConfigError(f"must be at least 1, got {self.epochs}", option="epochs")
        if self.kind == "ridge" and not self.scale_inputs:
            raise ConfigError("applies to the linear and mlp heads (ridge is solved in closed form)",
                              option="scale_inputs")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    head: Head
    tail_state: dict[str, torch.Tensor] | None
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    input_scale: float = 1.0     # what the head's inputs were multiplied by in training (folded into its weights)


def _torch_module(kind: str, dim: int, num_classes: int, hidden: int, dropout: float = 0.0) -> nn.Module:
    """The torch form of a numpy head kind: ``linear`` is one layer, ``mlp`` is layer, ReLU, dropout, layer
    (dropout is the identity in eval mode, so the logits are :class:`MLPHead`'s)."""
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    raise ConfigError(f"no torch form for head kind '{kind}'")


def _layers(module: nn.Module) -> list[nn.Linear]:
    """The linear layers of a :func:`_torch_module`, in order."""
    return [module] if isinstance(module, nn.Linear) else [module[0], module[-1]]


def torch_head(head: Head) -> nn.Module:
    """The torch module computing the same logits as a numpy head (for export)."""
    if isinstance(head, MLPHead):
        kind, hidden, arrays = "mlp", head.w1.shape[0], [(head.w1, head.b1), (head.w2, head.b2)]
    elif isinstance(head, LinearHead):
        kind, hidden, arrays = "linear", 0, [(head.weight, head.bias)]
    else:
        raise ConfigError(f"no torch form for head kind '{head.kind}'")
    module = _torch_module(kind, head.feature_dim, head.num_classes, hidden)
    with torch.no_grad():
        for layer, (weight, bias) in zip(_layers(module), arrays):
            layer.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
            layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    return module.eval()


class _ScaledInputs(nn.Module):
    """A head trained on its inputs times a fixed ``factor`` (no parameter of its own)."""

    def __init__(self, head: nn.Module, factor: float):
        super().__init__()
        self.head, self.factor = head, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * self.factor)

    def folded(self) -> nn.Module:
        """The head alone, computing the same logits on unscaled inputs: ``W (f x) + b = (f W) x + b``."""
        with torch.no_grad():
            _layers(self.head)[0].weight.mul_(self.factor)
        return self.head


def _input_scale(tail: nn.Module, train_x: np.ndarray, compute: ComputeDevice, rows: int = 4096) -> float:
    """1 / root mean square of the head's inputs over (at most ``rows`` evenly spaced) training rows: the tail's
    outputs as it starts when one trains, else the cached features themselves."""
    sample = train_x[np.unique(np.linspace(0, len(train_x) - 1, min(rows, len(train_x))).astype(np.int64))]
    inputs = _predict(tail.eval(), nn.Identity(), sample, compute) if any(True for _ in tail.parameters()) \
        else np.asarray(sample, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(inputs, dtype=np.float64))))
    return 1.0 / rms if np.isfinite(rms) and rms > 0 else 1.0


def _numpy_head(kind: str, module: nn.Module) -> Head:
    """The numpy head (what ships) of a trained :func:`_torch_module`."""
    arrays = [t.detach().cpu().numpy().copy() for layer in _layers(module) for t in (layer.weight, layer.bias)]
    return LinearHead(*arrays) if kind == "linear" else MLPHead(*arrays)


def _predict(tail: nn.Module, head: nn.Module, x: np.ndarray, compute: ComputeDevice,
             batch_size: int = 512) -> np.ndarray:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(compute.device)
            outputs.append(head(tail(chunk)).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


@contextlib.contextmanager
def _one_thread(wanted: bool):
    """torch on one intra-op thread inside the block (when ``wanted``), as many as before afterwards.

    A head on cached features multiplies matrices too small for threads to pay: on a shared 2-core VM the
    default linear head on banking77 trained in 3.1-3.6 s on one thread and in 6.3 s to 279 s on two, depending on
    what else ran (each step waits for the slower thread)."""
    if not wanted:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_gradient_head(
    tail: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    feature_dim: int,
    config: HeadConfig,
    compute: ComputeDevice,
    progress: ProgressFactory = silent_progress,
) -> TrainResult:
    """Train a linear or MLP head (and the unfrozen tail, if any) with early stopping; a head alone on the CPU
    trains on one thread (:func:`_one_thread`)."""
    head_only = compute.device.type == "cpu" and not any(True for _ in tail.parameters())
    with _one_thread(head_only):
        return _train_gradient_head(tail, train_x, train_y, val_x, val_y, num_classes, feature_dim, config, compute,
                                    progress)


def _train_gradient_head(tail, train_x, train_y, val_x, val_y, num_classes, feature_dim, config, compute,
                         progress) -> TrainResult:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    tail = tail.to(compute.device)
    factor = _input_scale(tail, train_x, compute) if config.scale_inputs else 1.0
    head = _ScaledInputs(_torch_module(config.kind, feature_dim, num_classes, config.hidden, config.dropout),
                         factor).to(compute.device)
    tail_params = [p for p in tail.parameters()]
    for p in tail_params:
        p.requires_grad_(True)
    optimizers = [Adam(head.parameters(), config.lr, weight_decay=config.weight_decay)]
    if tail_params:
        optimizers.append(Adam(tail_params, config.tail_lr, weight_decay=config.weight_decay))
    steps_per_epoch = max(1, math.ceil(len(train_x) / config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    step = 0
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    labels = torch.from_numpy(train_y.astype(np.int64))
    best = (-1.0, 0, copy.deepcopy(head.state_dict()), copy.deepcopy(tail.state_dict()))
    history: list[dict] = []
    bar = progress("training head", config.epochs)
    epoch = 0
    try:
        for epoch in range(1, config.epochs + 1):
            head.train()
            tail.eval()  # batch-norm statistics of the pretrained tail stay frozen on small data
            order = torch.randperm(len(train_x), generator=generator)
            running = 0.0
            for start in range(0, len(order), config.batch_size):
                idx = order[start:start + config.batch_size].numpy()
                idx.sort()
                x = torch.from_numpy(np.ascontiguousarray(train_x[idx])).to(compute.device)
                y = labels[idx].to(compute.device)
                loss = loss_fn(head(tail(x)), y)
                head.zero_grad()
                tail.zero_grad()
                loss.backward()
                cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
                with torch.no_grad():
                    for optimizer in optimizers:
                        optimizer.step([p.grad for p in optimizer.params], lr_scale=cosine)
                step += 1
                running += float(loss.detach()) * len(idx)
            head.eval()
            val_accuracy = top1_accuracy(_predict(tail, head, val_x, compute), val_y)
            history.append({"epoch": epoch, "loss": running / len(train_x), "val_accuracy": val_accuracy})
            if val_accuracy > best[0]:
                best = (val_accuracy, epoch, copy.deepcopy(head.state_dict()), copy.deepcopy(tail.state_dict()))
            bar.update(1)
            if epoch - best[1] >= config.patience:
                break
    finally:
        bar.close()
    head.load_state_dict(best[2])
    tail.load_state_dict(best[3])
    tail_state = {k: v.detach().cpu().clone() for k, v in tail.state_dict().items()} if tail_params else None
    return TrainResult(_numpy_head(config.kind, head.cpu().folded()), tail_state, best[1], epoch, history, factor)


def fit_ridge_head(
    tail: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    feature_dim: int,
    config: HeadConfig,
    compute: ComputeDevice,
    progress: ProgressFactory = silent_progress,
) -> TrainResult:
    """Closed-form ridge on the pooled features; alpha chosen on the validation split."""
    if any(True for _ in tail.parameters()):
        raise ConfigError("the ridge head is solved in closed form on frozen features: train no backbone "
                          "layers (0)", option="train_last")
    head = RidgeHead.fit(np.asarray(train_x), train_y, num_classes, np.asarray(val_x), val_y)
    return TrainResult(head, None, best_epoch=0, epochs_run=0, history=[{"alpha": head.alpha}])


HEAD_TRAINERS: dict[str, Callable[..., TrainResult]] = {
    "linear": train_gradient_head,
    "mlp": train_gradient_head,
    "ridge": fit_ridge_head,
}
