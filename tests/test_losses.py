import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import neighbor_lt.losses as losses_module
from neighbor_lt.losses import (
    balanced_softmax_loss,
    cross_entropy_loss,
    neighbor_csr,
    neighbor_silencing_loss,
)


def dense_reference(logits, targets, counts, pairs, lambda_s):
    """Eq. 4 written literally with a dense lambda matrix (fine for tiny C)."""
    num_classes = logits.shape[1]
    lam = torch.ones(num_classes, num_classes, dtype=torch.float64)
    for t, a in pairs.tolist():
        lam[t, a] = lam[a, t] = lambda_s
    a = logits.double() + counts.double().log()
    per_class = []  # loss of every sample for every label c: log sum_j lam[c, j] e^{a_j} - a_c
    for c in range(num_classes):
        per_class.append(torch.logsumexp(a + lam[c].log(), dim=1) - a[:, c])
    per_class = torch.stack(per_class, dim=1)
    if targets.dim() == 1:
        return per_class.gather(1, targets[:, None]).squeeze(1).mean()
    return (targets.double() * per_class).sum(1).mean()


def test_doctests():
    assert doctest.testmod(losses_module).failed == 0


def test_balanced_softmax_hand_computed():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    counts = torch.tensor([100.0, 10.0, 1.0])
    # -log(n_y e^{z_y} / sum_j n_j e^{z_j}) for y = 2
    expected = -math.log(1 * math.exp(-1.0) / (100 * math.exp(2.0) + 10 * math.exp(0.5) + 1 * math.exp(-1.0)))
    assert balanced_softmax_loss(logits, torch.tensor([2]), counts).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_softmax_equal_counts_is_cross_entropy():
    logits = torch.randn(8, 5)
    targets = torch.randint(0, 5, (8,))
    assert torch.allclose(
        balanced_softmax_loss(logits, targets, torch.full((5,), 7.0)), F.cross_entropy(logits, targets)
    )


def test_neighbor_silencing_hand_computed():
    # L = 2 targets, 1 auxiliary class (index 2) queried from target 0.
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.5], [0.3, -0.2, 1.5]])
    counts = torch.tensor([50.0, 5.0, 20.0])
    pairs = torch.tensor([[0, 2]])
    targets = torch.tensor([0, 1, 2])
    lam = 0.1
    # Eq. 4: log(1 + sum_{j != y} lambda_yj exp(log n_j - log n_y + z_j - z_y)), written out term by term.
    s0 = math.log(
        1
        + 1.0 * math.exp(math.log(5) - math.log(50) + 0.0 - 1.0)
        + lam * math.exp(math.log(20) - math.log(50) + 2.0 - 1.0)
    )
    s1 = math.log(
        1
        + 1.0 * math.exp(math.log(50) - math.log(5) + 0.0 - 1.0)
        + 1.0 * math.exp(math.log(20) - math.log(5) + 0.5 - 1.0)
    )
    s2 = math.log(
        1
        + lam * math.exp(math.log(50) - math.log(20) + 0.3 - 1.5)
        + 1.0 * math.exp(math.log(5) - math.log(20) - 0.2 - 1.5)
    )
    expected = (s0 + s1 + s2) / 3
    got = neighbor_silencing_loss(logits, targets, counts, pairs, lambda_s=lam)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    per_sample = neighbor_silencing_loss(logits, targets, counts, pairs, lambda_s=lam, reduction="none")
    assert per_sample.tolist() == pytest.approx([s0, s1, s2], rel=1e-5)


def test_lambda_one_equals_balanced_softmax_on_merged_space():
    torch.manual_seed(0)
    logits = torch.randn(32, 12) * 3
    counts = torch.randint(1, 500, (12,)).float()
    targets = torch.randint(0, 12, (32,))
    pairs = torch.tensor([[0, 8], [1, 8], [2, 9], [3, 10], [0, 11]])
    ns = neighbor_silencing_loss(logits, targets, counts, pairs, lambda_s=1.0)
    bs = balanced_softmax_loss(logits, targets, counts)
    assert torch.allclose(ns, bs, atol=1e-6)
    # also through the silencing code path (lambda just under 1 converges to the same value)
    near = neighbor_silencing_loss(logits, targets, counts, pairs, lambda_s=1.0 - 1e-7)
    assert torch.allclose(near, bs, atol=1e-5)


@pytest.mark.parametrize("lambda_s", [0.1, 0.5, 2.0])
def test_matches_dense_reference_hard_and_soft(lambda_s):
    torch.manual_seed(1)
    num_classes = 10  # targets 0..5, auxiliary 6..9
    pairs = torch.tensor([[0, 6], [0, 7], [1, 7], [2, 8], [5, 9], [0, 6]])  # duplicate pair on purpose
    logits = torch.randn(16, num_classes, dtype=torch.float64).float()
    counts = torch.randint(1, 100, (num_classes,)).float()
    hard = torch.randint(0, num_classes, (16,))
    got = neighbor_silencing_loss(logits, hard, counts, pairs, lambda_s=lambda_s)
    assert got.item() == pytest.approx(dense_reference(logits, hard, counts, pairs, lambda_s).item(), rel=1e-5)
    # soft targets: Mixup of two labels plus label smoothing (every class non-zero)
    soft = 0.7 * F.one_hot(hard, num_classes).float() + 0.3 * F.one_hot(hard.flip(0), num_classes).float()
    soft = soft * 0.9 + 0.1 / num_classes
    got_soft = neighbor_silencing_loss(logits, soft, counts, pairs, lambda_s=lambda_s)
    assert got_soft.item() == pytest.approx(dense_reference(logits, soft, counts, pairs, lambda_s).item(), rel=1e-5)


def test_one_hot_soft_targets_equal_hard_targets():
    torch.manual_seed(2)
    logits = torch.randn(6, 7)
    counts = torch.arange(1, 8).float()
    targets = torch.tensor([0, 1, 4, 5, 6, 2])
    pairs = torch.tensor([[0, 5], [1, 6], [2, 5]])
    hard = neighbor_silencing_loss(logits, targets, counts, pairs)
    soft = neighbor_silencing_loss(logits, F.one_hot(targets, 7).float(), counts, pairs)
    assert torch.allclose(hard, soft, atol=1e-6)


def test_silencing_is_symmetric_and_lowers_the_loss():
    logits = torch.tensor([[0.0, 0.0, 3.0]])
    counts = torch.ones(3)
    pairs = torch.tensor([[0, 2]])
    full = neighbor_silencing_loss(logits, torch.tensor([0]), counts, pairs, lambda_s=1.0)
    silenced = neighbor_silencing_loss(logits, torch.tensor([0]), counts, pairs, lambda_s=0.1)
    assert silenced < full  # the neighbor's competition is damped
    # an auxiliary sample's parent target is silenced too
    aux_logits = torch.tensor([[3.0, 0.0, 0.0]])
    aux_full = neighbor_silencing_loss(aux_logits, torch.tensor([2]), counts, pairs, lambda_s=1.0)
    aux_silenced = neighbor_silencing_loss(aux_logits, torch.tensor([2]), counts, pairs, lambda_s=0.1)
    assert aux_silenced < aux_full
    # a class without neighbors is unaffected
    other = neighbor_silencing_loss(logits, torch.tensor([1]), counts, pairs, lambda_s=0.1)
    assert other.item() == pytest.approx(balanced_softmax_loss(logits, torch.tensor([1]), counts).item(), rel=1e-6)


def test_gradients_match_dense_reference():
    torch.manual_seed(3)
    pairs = torch.tensor([[0, 4], [1, 4], [2, 5]])
    counts = torch.tensor([30.0, 10.0, 3.0, 1.0, 8.0, 8.0])
    targets = torch.tensor([0, 4, 5, 3])
    logits = torch.randn(4, 6, requires_grad=True)
    neighbor_silencing_loss(logits, targets, counts, pairs, lambda_s=0.1).backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    dense_reference(ref_logits, targets, counts, pairs, 0.1).backward()
    assert torch.allclose(logits.grad, ref_logits.grad.float(), atol=1e-6)


def test_sparse_pairs_at_scale_build_no_dense_matrix():
    # 20,000 classes: a dense float C x C matrix would need 1.6 GB; the CSR form is a few hundred KB.
    num_classes, batch = 20_000, 8
    pairs = torch.stack([torch.arange(0, 10_000), torch.arange(10_000, 20_000)], 1)
    ptr, neighbors = neighbor_csr(pairs, num_classes)
    assert ptr.shape == (num_classes + 1,) and neighbors.numel() == 2 * 10_000
    logits = torch.randn(batch, num_classes)
    counts = torch.ones(num_classes)
    targets = torch.randint(0, num_classes, (batch,))
    loss = neighbor_silencing_loss(logits, targets, counts, pairs, csr=(ptr, neighbors))
    assert torch.isfinite(loss)


def test_reductions_and_bad_inputs():
    logits = torch.randn(4, 3)
    targets = torch.tensor([0, 1, 2, 0])
    counts = torch.tensor([5.0, 2.0, 1.0])
    pairs = torch.tensor([[0, 2]])
    none = neighbor_silencing_loss(logits, targets, counts, pairs, reduction="none")
    assert none.shape == (4,)
    assert neighbor_silencing_loss(logits, targets, counts, pairs, reduction="sum").item() == pytest.approx(
        none.sum().item()
    )
    with pytest.raises(ValueError, match="positive"):
        balanced_softmax_loss(logits, targets, torch.tensor([5.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="class_counts has shape"):
        balanced_softmax_loss(logits, targets, torch.ones(4))
    with pytest.raises(ValueError, match="lambda_s"):
        neighbor_silencing_loss(logits, targets, counts, pairs, lambda_s=0)
    with pytest.raises(ValueError, match="outside"):
        neighbor_silencing_loss(logits, targets, counts, torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="soft targets"):
        cross_entropy_loss(logits, torch.ones(4, 5))


def test_soft_target_gradients_match_dense_reference():
    torch.manual_seed(4)
    pairs = torch.tensor([[0, 4], [1, 4], [2, 5], [0, 5]])
    counts = torch.tensor([30.0, 10.0, 3.0, 1.0, 8.0, 8.0])
    hard = torch.tensor([0, 4, 5, 3, 1])
    soft = 0.6 * F.one_hot(hard, 6).float() + 0.4 * F.one_hot(hard.roll(1), 6).float()
    soft = 0.9 * soft + 0.1 / 6
    logits = (torch.randn(5, 6) * 4).requires_grad_(True)
    neighbor_silencing_loss(logits, soft, counts, pairs, lambda_s=0.2, reduction="sum").backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    (dense_reference(ref_logits, soft, counts, pairs, 0.2) * 5).backward()
    assert torch.allclose(logits.grad, ref_logits.grad.float(), atol=1e-5)


def test_extreme_logits_stay_finite_and_exact():
    logits = torch.tensor([[100.0, -100.0, 0.0]], requires_grad=True)
    counts = torch.ones(3)
    loss = neighbor_silencing_loss(logits, torch.tensor([1]), counts, torch.tensor([[0, 2]]), lambda_s=0.5)
    # label 1 has no neighbor: exactly cross-entropy, about 200 (a float softmax would underflow to 0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.detach(), torch.tensor([1])).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_bf16_logits_give_bf16_gradients():
    logits = torch.randn(4, 6).to(torch.bfloat16).requires_grad_(True)
    loss = neighbor_silencing_loss(logits, torch.tensor([0, 1, 2, 3]), torch.ones(6), torch.tensor([[0, 4], [1, 5]]))
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("name", list(losses_module.LOSSES))
def test_create_loss_modules_equal_their_functions(name):
    g = torch.Generator().manual_seed(0)
    logits, counts = torch.randn(6, 5, generator=g), torch.tensor([40.0, 10.0, 3.0, 5.0, 5.0])
    targets, pairs = torch.tensor([0, 1, 2, 3, 4, 1]), torch.tensor([[1, 3], [2, 4]])
    criterion = losses_module.create_loss(name, counts, neighbor_pairs=pairs, lambda_s=0.3)
    assert isinstance(criterion, torch.nn.Module) and losses_module.get_loss(name) is type(criterion)
    extra = {"neighbor_pairs": pairs, "lambda_s": 0.3} if criterion.uses_neighbors else {}
    for reduction in ("mean", "sum", "none"):
        expected = losses_module.LOSS_FUNCTIONS[name](logits, targets, counts, reduction=reduction, **extra)
        assert torch.allclose(criterion(logits, targets, reduction=reduction), expected)


def test_create_loss_validates_its_options():
    counts = torch.ones(3)
    with pytest.raises(ValueError, match="unknown loss 'focal'; choose from ce, balanced_softmax, neighbor_silencing"):
        losses_module.create_loss("focal", counts)
    with pytest.raises(ValueError, match="lambda_s must be positive"):
        losses_module.create_loss("neighbor_silencing", counts, neighbor_pairs=[[0, 2]], lambda_s=0.0)
    with pytest.raises(ValueError, match="outside 0..2"):
        losses_module.create_loss("neighbor_silencing", counts, neighbor_pairs=[[0, 3]])
    with pytest.raises(ValueError, match=r"class_counts must be positive; classes \[1\]"):
        losses_module.create_loss("balanced_softmax", torch.tensor([2.0, 0.0, 1.0]))
    assert losses_module.create_loss("ce", counts, lambda_s=0.0)(torch.zeros(1, 3), torch.tensor([0])) > 0
