"""Incremental heads against references that need the host: real Lite0 features, torch's Adam and AdamW."""

import numpy as np
import pytest
from conftest import relative_error

from edgetl.runtime.bundle.heads import RidgeHead
from edgetl.runtime.learning import RidgeLearner


def test_streaming_ridge_on_real_lite0_features(digits_bundle):
    """The 1e-6 claim on d=1280 EfficientNet-Lite0 features of real digits, 12 updates in random order."""
    with np.load(digits_bundle.bundle / "learning" / "features.npz", allow_pickle=False) as data:
        x, y = data["features"], data["labels"]
    batch = RidgeHead.fit(x, y, 10, alpha=5.0)
    learner = RidgeLearner(x.shape[1], classes=[str(i) for i in range(10)], alpha=5.0)
    for chunk in np.array_split(np.random.default_rng(1).permutation(len(y)), 12):
        learner.partial_fit(x[chunk], y[chunk])
    assert relative_error(learner.head.weight, batch.weight) < 1e-6
    assert relative_error(learner.head.bias, batch.bias) < 1e-6


def _quadratic_problem(seed=0):
    """Seeded parameters and a fixed sequence of gradients for them (those of a least-squares loss)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=20)
    return rng.normal(size=5), lambda w: a.T @ (a @ w - b) / len(b)


def test_adam_takes_the_steps_of_torch_adam_on_numpy_arrays():
    """The device's ``sgd`` learner steps numpy arrays; its Adam is torch's, step for step."""
    torch = pytest.importorskip("torch")
    from edgetl.runtime.learning.learners import Adam

    start, gradient = _quadratic_problem()
    ours = start.copy()
    adam = Adam([ours], lr=0.05)
    theirs = torch.tensor(start, requires_grad=True)
    reference = torch.optim.Adam([theirs], lr=0.05)
    for _ in range(40):
        adam.step([gradient(ours)])
        theirs.grad = torch.from_numpy(gradient(theirs.detach().numpy()))
        reference.step()
        # same maths, operation order may differ
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert adam.steps == 40 and np.abs(ours - start).max() > 0.5          # it moved


def test_adamw_on_torch_tensors_with_a_schedule_is_torch_adamw():
    """The host's gradient heads step torch parameters with the same class (decoupled weight decay)."""
    torch = pytest.importorskip("torch")
    from edgetl.runtime.learning.learners import Adam

    start, gradient = _quadratic_problem(1)
    ours = torch.nn.Parameter(torch.tensor(start))
    theirs = torch.nn.Parameter(torch.tensor(start))
    unused = torch.nn.Parameter(torch.ones(3))
    adam = Adam([ours, unused], lr=0.05, weight_decay=0.1)
    reference = torch.optim.AdamW([theirs], lr=0.05, weight_decay=0.1)
    for step in range(40):
        scale = 0.5 * (1 + np.cos(np.pi * step / 40))
        with torch.no_grad():
            adam.step([torch.from_numpy(gradient(ours.detach().numpy())), None], lr_scale=scale)
        reference.param_groups[0]["lr"] = 0.05 * scale
        theirs.grad = torch.from_numpy(gradient(theirs.detach().numpy()))
        reference.step()
        # same maths, operation order may differ
        np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(unused.detach(), torch.ones(3))            # no gradient: left alone
