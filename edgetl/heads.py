"""Head training on cached features: linear, MLP (gradient) and ridge (closed form).

Gradient heads train in float32 (mixed precision pays off in the backbone
pass, not on cached features) with AdamW, label smoothing, a cosine schedule
and early stopping on validation accuracy; with ``--train-last N`` the unfrozen tail of
the backbone trains together with the head, on the cached activations at the
freeze boundary.  Whatever is trained, the result is a numpy head from
:mod:`edgetl.runtime.heads`, which is what ships; ridge is the very same
implementation the device uses.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgetl.runtime.errors import ConfigError
from edgetl.runtime.heads import Head, LinearHead, MLPHead, RidgeHead
from edgetl.runtime.progress import ProgressFactory, silent_progress

from .extract import ComputeDevice


@dataclass(frozen=True)
class HeadConfig:
    """Settings of head training (recorded in the run manifest)."""

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

    def __post_init__(self) -> None:
        if self.kind not in HEAD_TRAINERS:
            raise ConfigError(f"unknown head '{self.kind}'; choose one of {', '.join(HEAD_TRAINERS)}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    head: Head
    tail_state: dict[str, torch.Tensor] | None
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def torch_head(head: Head) -> nn.Module:
    """The torch module computing the same logits as a numpy head (for training and export)."""
    if isinstance(head, LinearHead):
        layer = nn.Linear(head.feature_dim, head.num_classes)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(head.weight, dtype=np.float32)))
            layer.bias.copy_(torch.from_numpy(np.asarray(head.bias, dtype=np.float32)))
        return layer
    if isinstance(head, MLPHead):
        first = nn.Linear(head.feature_dim, head.w1.shape[0])
        second = nn.Linear(head.w1.shape[0], head.num_classes)
        with torch.no_grad():
            first.weight.copy_(torch.from_numpy(head.w1.astype(np.float32)))
            first.bias.copy_(torch.from_numpy(head.b1.astype(np.float32)))
            second.weight.copy_(torch.from_numpy(head.w2.astype(np.float32)))
            second.bias.copy_(torch.from_numpy(head.b2.astype(np.float32)))
        return nn.Sequential(first, nn.ReLU(), second)
    raise ConfigError(f"no torch form for head kind '{head.kind}'")


class AdamW:
    """Decoupled-weight-decay Adam (Loshchilov & Hutter) over parameter groups.

    Written out because ``torch.optim`` imports ``torch._dynamo`` on first use,
    which costs about 2 s per process here: more than ten epochs of head
    training on cached features.
    """

    def __init__(self, groups: list[dict], weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [dict(g, params=list(g["params"]), base_lr=g["lr"]) for g in groups]
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps = 0

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def set_lr_factor(self, factor: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * factor

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1 ** self.steps
        correction2 = 1 - beta2 ** self.steps
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v = self.state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
                p.mul_(1 - lr * self.weight_decay)
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v / correction2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-lr / correction1)


def _new_module(kind: str, dim: int, num_classes: int, config: HeadConfig) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    return nn.Sequential(
        nn.Linear(dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, num_classes)
    )


def _to_numpy_head(kind: str, module: nn.Module) -> Head:
    if kind == "linear":
        return LinearHead(module.weight.detach().cpu().numpy().copy(), module.bias.detach().cpu().numpy().copy())
    first, last = module[0], module[-1]
    return MLPHead(
        first.weight.detach().cpu().numpy().copy(), first.bias.detach().cpu().numpy().copy(),
        last.weight.detach().cpu().numpy().copy(), last.bias.detach().cpu().numpy().copy(),
    )


def _predict(tail: nn.Module, head: nn.Module, x: np.ndarray, compute: ComputeDevice, batch_size: int = 512) -> np.ndarray:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(compute.device)
            outputs.append(head(tail(chunk)).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


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
    """Train a linear or MLP head (and the unfrozen tail, if any) with early stopping."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    head = _new_module(config.kind, feature_dim, num_classes, config).to(compute.device)
    tail = tail.to(compute.device)
    tail_params = [p for p in tail.parameters()]
    for p in tail_params:
        p.requires_grad_(True)
    groups = [{"params": head.parameters(), "lr": config.lr}]
    if tail_params:
        groups.append({"params": tail_params, "lr": config.tail_lr})
    optimizer = AdamW(groups, weight_decay=config.weight_decay)
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
                optimizer.zero_grad()
                loss.backward()
                optimizer.set_lr_factor(0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))
                optimizer.step()
                step += 1
                running += float(loss.detach()) * len(idx)
            head.eval()
            val_accuracy = float(np.mean(np.argmax(_predict(tail, head, val_x, compute), axis=1) == val_y))
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
    return TrainResult(_to_numpy_head(config.kind, head.cpu()), tail_state, best[1], epoch, history)


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
        raise ConfigError("the ridge head is solved in closed form on frozen features; use --train-last 0")
    head = RidgeHead.fit(np.asarray(train_x), train_y, num_classes, np.asarray(val_x), val_y)
    return TrainResult(head, None, best_epoch=0, epochs_run=0, history=[{"alpha": head.alpha}])


HEAD_TRAINERS: dict[str, Callable[..., TrainResult]] = {
    "linear": train_gradient_head,
    "mlp": train_gradient_head,
    "ridge": fit_ridge_head,
}
