"""LiVT's balanced BCE (Bal-BCE) on hand-computed values, no Trainer."""

import math

import pytest
import torch

from neighbor_lt.losses import LOSS_FUNCTIONS, balanced_bce_loss


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _bal_bce_by_hand(z: list[float], y: list[float], counts: list[float]) -> float:
    """sum_j BCE(sigmoid(z_j + log(pi_j / (1 - pi_j))), y_j), written out term by term."""
    total = sum(counts)
    loss = 0.0
    for z_j, y_j, n_j in zip(z, y, counts):
        pi = n_j / total
        a = z_j + math.log(pi) - math.log(1 - pi)
        loss += y_j * _softplus(-a) + (1 - y_j) * _softplus(a)  # -y log s(a) - (1 - y) log(1 - s(a))
    return loss


def test_registered_under_bal_bce():
    assert LOSS_FUNCTIONS["bal_bce"] is balanced_bce_loss


def test_two_classes_closed_form():
    # pi = (3/4, 1/4): bias (log 3, -log 3); at z = 0 both terms are log(4/3).
    loss = balanced_bce_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([3.0, 1.0]))
    assert loss.item() == pytest.approx(2 * math.log(4 / 3), abs=1e-6)


def test_balanced_counts_are_plain_bce_with_log_odds_of_uniform_prior():
    # Uniform prior over 4 classes: bias log(1/3) on every logit.
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    loss = balanced_bce_loss(z, torch.tensor([2]), torch.full((4,), 7.0))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        z + math.log(1 / 3), torch.tensor([[0.0, 0.0, 1.0, 0.0]]), reduction="sum"
    )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_hand_computed_batch_and_reductions():
    z = [[1.0, -2.0, 0.5], [0.0, 0.3, -0.7]]
    counts = [60.0, 30.0, 10.0]
    per = [
        _bal_bce_by_hand(z[0], [1, 0, 0], counts),
        _bal_bce_by_hand(z[1], [0, 0, 1], counts),
    ]
    logits, targets = torch.tensor(z), torch.tensor([0, 2])
    none = balanced_bce_loss(logits, targets, torch.tensor(counts), reduction="none")
    assert none.tolist() == pytest.approx(per, abs=1e-5)
    assert balanced_bce_loss(logits, targets, torch.tensor(counts)).item() == pytest.approx(sum(per) / 2, abs=1e-5)
    total = balanced_bce_loss(logits, targets, torch.tensor(counts), reduction="sum").item()
    assert total == pytest.approx(sum(per), abs=1e-5)


def test_mean_is_livt_scaling_c_times_elementwise_mean():
    # LiVT returns C * F.binary_cross_entropy_with_logits(x + bias, target, reduction="mean").
    torch.manual_seed(0)
    logits, counts = torch.randn(5, 6), torch.tensor([50.0, 20.0, 9.0, 4.0, 2.0, 1.0])
    targets = torch.randint(0, 6, (5,))
    pi = counts / counts.sum()
    livt = 6 * torch.nn.functional.binary_cross_entropy_with_logits(
        logits + pi.log() - (1 - pi).log(), torch.nn.functional.one_hot(targets, 6).float()
    )
    assert balanced_bce_loss(logits, targets, counts).item() == pytest.approx(livt.item(), rel=1e-6)


def test_soft_targets_hand_computed():
    # Mixup / label smoothing: the BCE target of each class is its soft weight.
    z, y, counts = [0.2, -0.4, 1.1], [0.7, 0.3, 0.0], [5.0, 3.0, 2.0]
    loss = balanced_bce_loss(torch.tensor([z]), torch.tensor([y]), torch.tensor(counts))
    assert loss.item() == pytest.approx(_bal_bce_by_hand(z, y, counts), abs=1e-6)


def test_soft_one_hot_equals_hard_target():
    logits, counts = torch.randn(3, 4), torch.tensor([8.0, 4.0, 2.0, 1.0])
    hard = torch.tensor([0, 3, 1])
    soft = torch.nn.functional.one_hot(hard, 4).float()
    assert torch.allclose(balanced_bce_loss(logits, hard, counts), balanced_bce_loss(logits, soft, counts))


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        balanced_bce_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        balanced_bce_loss(torch.zeros(1, 1), torch.tensor([0]), torch.tensor([4.0]))
    with pytest.raises(ValueError, match="reduction"):
        balanced_bce_loss(torch.zeros(1, 2), torch.tensor([0]), torch.ones(2), reduction="avg")
