"""Long-tail losses: balanced softmax (eq. 2), neighbor-silencing (eq. 4) and LiVT's balanced BCE.

All functions are pure: ``(logits, targets, class_counts, ...) -> loss``. ``targets`` is either a LongTensor ``[B]``
of class indices or a float tensor ``[B, C]`` of soft targets (Mixup / CutMix / label smoothing); a soft target's
loss is the target-weighted sum of the per-class losses. No function builds a dense ``C x C`` tensor: the
neighbor pairs stay a sparse edge list, so 28,500 classes (iNaturalist 2018 plus its auxiliary set) cost what
balanced softmax costs.

The Trainer uses them as modules (timm ``timm/loss/`` style): one :class:`torch.nn.Module` per loss owning its inputs
(class counts, the neighbor lists, ``lambda_s``), chosen by name from :data:`LOSSES` through :func:`create_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "balanced_softmax_loss",
    "neighbor_silencing_loss",
    "balanced_bce_loss",
    "cross_entropy_loss",
    "neighbor_csr",
    "LongTailLoss",
    "CrossEntropyLoss",
    "BalancedSoftmaxLoss",
    "NeighborSilencingLoss",
    "BalancedBCELoss",
    "LOSSES",
    "LOSS_FUNCTIONS",
    "get_loss",
    "create_loss",
]


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _log_counts(class_counts: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, device=logits.device, dtype=torch.float32)
    if counts.shape != logits.shape[-1:]:
        raise ValueError(f"class_counts has shape {tuple(counts.shape)}, expected ({logits.shape[-1]},)")
    if bool((counts <= 0).any()):
        raise ValueError(
            f"class_counts must be positive; classes {torch.nonzero(counts <= 0).flatten().tolist()} are not"
        )
    return counts.log()


def _check_targets(targets: torch.Tensor, logits: torch.Tensor) -> None:
    if targets.dim() == 1:
        if targets.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"hard targets must be integer class indices, got {targets.dtype}")
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(f"{targets.shape[0]} targets for {logits.shape[0]} logits rows")
    elif targets.shape != logits.shape:
        raise ValueError(f"soft targets have shape {tuple(targets.shape)}, expected {tuple(logits.shape)}")


def _soft_or_hard_ce(adjusted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of ``adjusted`` logits against hard or soft targets."""
    if targets.dim() == 1:
        return F.cross_entropy(adjusted, targets, reduction="none")
    return -(targets.to(adjusted.dtype) * F.log_softmax(adjusted, dim=-1)).sum(-1)


def cross_entropy_loss(logits, targets, class_counts=None, reduction: str = "mean", **_) -> torch.Tensor:
    """Plain cross-entropy (``class_counts`` accepted and ignored so every loss has the same call)."""
    _check_targets(targets, logits)
    return _reduce(_soft_or_hard_ce(logits.float(), targets), reduction)


def balanced_softmax_loss(logits, targets, class_counts, reduction: str = "mean") -> torch.Tensor:
    """Balanced softmax cross-entropy (eq. 2): cross-entropy on ``z_j + log n_j``.

    Example:
        >>> logits = torch.tensor([[1.0, 0.0]]); counts = torch.tensor([10.0, 1.0])
        >>> balanced_softmax_loss(logits, torch.tensor([1]), counts)  # -log(1*e^0 / (10*e^1 + 1*e^0))
        tensor(3.3387)

    Args:
        logits: ``[B, C]`` raw classifier outputs.
        targets: ``[B]`` class indices or ``[B, C]`` soft targets.
        class_counts: ``[C]`` training images per class (all positive).
        reduction: ``"mean"`` (batch mean, default), ``"sum"`` or ``"none"``.
    """
    _check_targets(targets, logits)
    adjusted = logits.float() + _log_counts(class_counts, logits)
    return _reduce(_soft_or_hard_ce(adjusted, targets), reduction)


def neighbor_csr(neighbor_pairs: torch.Tensor, num_classes: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric, de-duplicated neighbor lists in CSR form: ``(ptr [C+1], neighbors [2E'])``.

    ``neighbors[ptr[c]:ptr[c+1]]`` are the classes silenced when the label is ``c``.
    """
    pairs = torch.as_tensor(neighbor_pairs, dtype=torch.int64, device=device).reshape(-1, 2)
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= num_classes):
        raise ValueError(f"neighbor_pairs hold a class outside 0..{num_classes - 1}")
    if bool((pairs[:, 0] == pairs[:, 1]).any()):
        raise ValueError("neighbor_pairs pair a class with itself")
    edges = torch.cat([pairs, pairs.flip(1)]).unique(dim=0)  # sorted by source, then destination
    counts = torch.bincount(edges[:, 0], minlength=num_classes)
    ptr = torch.zeros(num_classes + 1, dtype=torch.int64, device=edges.device)
    ptr[1:] = counts.cumsum(0)
    return ptr, edges[:, 1].contiguous()


def neighbor_silencing_loss(
    logits,
    targets,
    class_counts,
    neighbor_pairs,
    lambda_s: float = 0.1,
    reduction: str = "mean",
    csr: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Neighbor-silencing cross-entropy (eq. 4).

    ``log(1 + sum_{j != y} lambda_yj exp(log n_j - log n_y + z_j - z_y))`` with ``lambda_yj = lambda_s`` when
    ``(y, j)`` or ``(j, y)`` is a neighbor pair and 1 otherwise. With ``a = z + log n`` and ``lse = logsumexp(a)``
    this is ``lse - a_y + log(1 - (1 - lambda_s) * r_y)``, where ``r_y`` is the softmax mass of ``y``'s neighbors,
    so only the (sample, neighbor) entries are gathered: no ``C x C`` (or extra ``B x C``) tensor is built.
    ``lambda_s = 1`` gives balanced softmax on the merged label space exactly.

    Example:
        >>> logits = torch.zeros(1, 3); counts = torch.ones(3)
        >>> pairs = torch.tensor([[0, 2]])  # target class 0, auxiliary class 2
        >>> neighbor_silencing_loss(logits, torch.tensor([0]), counts, pairs, lambda_s=0.1)  # log(1 + 1 + 0.1)
        tensor(0.7419)

    Args:
        logits: ``[B, C]`` raw outputs over targets ``0..L-1`` then auxiliary classes ``L..L+K-1``.
        targets: ``[B]`` class indices or ``[B, C]`` soft targets.
        class_counts: ``[C]`` images per class (for an auxiliary class: the images drawn per epoch).
        neighbor_pairs: LongTensor ``[E, 2]`` of (target class, auxiliary class); silencing is symmetric.
        lambda_s: silencing factor, > 0 (0.1 in the paper).
        reduction: ``"mean"`` (batch mean, default), ``"sum"`` or ``"none"``.
        csr: the precomputed :func:`neighbor_csr` of ``neighbor_pairs`` (saves work in a training loop).
    """
    if lambda_s <= 0:
        raise ValueError(f"lambda_s must be positive, got {lambda_s}")
    _check_targets(targets, logits)
    log_counts = _log_counts(class_counts, logits)
    num_classes = logits.shape[-1]
    if lambda_s == 1.0:
        return _reduce(_soft_or_hard_ce(logits.float() + log_counts, targets), reduction)
    ptr, neighbors = csr if csr is not None else neighbor_csr(neighbor_pairs, num_classes, logits.device)
    per_sample = _NeighborSilencing.apply(logits, log_counts, targets, ptr, neighbors, float(lambda_s))
    return _reduce(per_sample, reduction)


class _NeighborSilencing(torch.autograd.Function):
    """Per-sample eq. 4 with an analytic backward that reuses the softmax buffer for the gradient.

    With ``p = softmax(a)``, ``r_e`` the neighbor mass of entry ``e = (i, c)`` (sample, label with weight ``t_ic``)
    and ``k_e = t_ic (1 - lambda) / (1 - (1 - lambda) r_e)``:
    ``dL_i / da_ij = p_ij (T_i + sum_e k_e r_e) - t_ij - sum_{e: j in N(c)} k_e p_ij``, where ``T_i = sum_c t_ic``.
    So forward and backward hold one ``[B, C]`` buffer, as ``F.cross_entropy`` does.
    """

    @staticmethod
    def forward(ctx, logits, log_counts, targets, ptr, neighbors, lambda_s):
        p = logits.float() + log_counts  # a = z + log n, turned into softmax(a) in place below
        batch = p.shape[0]
        hard = targets.dim() == 1
        if hard:
            rows = torch.arange(batch, device=p.device)
            cls, weights = targets, torch.ones(batch, device=p.device)
        else:
            targets = targets.to(p.dtype)
            rows, cls = targets.nonzero(as_tuple=True)
            weights = targets[rows, cls]
        a_label = p[rows, cls]  # a at every (sample, label) entry, before the buffer is overwritten
        peak = p.amax(dim=1, keepdim=True)
        lse = peak.squeeze(1) + p.sub_(peak).exp_().sum(1).log()
        p.div_(torch.exp(lse - peak.squeeze(1))[:, None])
        # sum_c t_c (lse - a_c): the balanced-softmax part
        base = torch.zeros(batch, device=p.device).index_add_(0, rows, weights * (lse[rows] - a_label))
        degree = ptr[cls + 1] - ptr[cls]
        has = degree > 0
        rows, cls, degree, weights = rows[has], cls[has], degree[has], weights[has]
        # Expand every (sample, label) entry into its (sample, neighbor) pairs, CSR style.
        entry = torch.repeat_interleave(torch.arange(rows.numel(), device=p.device), degree)
        first = torch.repeat_interleave(ptr[cls] - (degree.cumsum(0) - degree), degree)
        nbr = neighbors[first + torch.arange(entry.numel(), device=p.device)]
        sample = rows[entry]
        p_nb = p[sample, nbr]
        mass = torch.zeros(rows.numel(), device=p.device).index_add_(0, entry, p_nb).clamp_(max=1.0)
        damp = 1.0 - lambda_s
        per_sample = base.index_add(0, rows, weights * torch.log1p(-damp * mass))
        coef = weights * damp / (1.0 - damp * mass)
        ctx.save_for_backward(p, targets, rows, coef, mass, entry, sample, nbr, p_nb)
        ctx.hard, ctx.logits_dtype, ctx.used = hard, logits.dtype, False
        return per_sample

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if ctx.used:
            raise RuntimeError("neighbor_silencing_loss reuses its buffer for the gradient: backward runs once")
        ctx.used = True
        p, targets, rows, coef, mass, entry, sample, nbr, p_nb = ctx.saved_tensors
        batch = p.shape[0]
        scale = targets.sum(1) if not ctx.hard else torch.ones(batch, device=p.device)
        scale = scale.index_add(0, rows, coef * mass)
        grad = p.mul_(scale[:, None])
        if ctx.hard:
            grad[torch.arange(batch, device=p.device), targets] -= 1.0
        else:
            grad.sub_(targets)
        grad.index_put_((sample, nbr), -coef[entry] * p_nb, accumulate=True)
        grad.mul_(grad_out[:, None])
        return grad.to(ctx.logits_dtype), None, None, None, None, None


def balanced_bce_loss(logits, targets, class_counts, reduction: str = "mean") -> torch.Tensor:
    """LiVT's balanced binary cross-entropy (Bal-BCE): sigmoid BCE on ``z_j + log(pi_j / (1 - pi_j))``.

    ``pi_j = n_j / sum n`` is the class prior. Each class is an independent binary problem, so the logit
    adjustment is the prior's log-odds (LiVT ``util/loss.py``, ``BCE_loss(type="Bal")._bal_sigmod_bias``), the
    sigmoid counterpart of balanced softmax's ``log n_j``. The per-sample loss sums over classes and ``"mean"``
    averages over the batch: LiVT's ``C * binary_cross_entropy_with_logits(..., reduction="mean")``.

    Example:
        >>> logits = torch.zeros(1, 2); counts = torch.tensor([3.0, 1.0])  # pi = (.75, .25): bias (log 3, -log 3)
        >>> balanced_bce_loss(logits, torch.tensor([0]), counts)  # -log s(log 3) - log(1 - s(-log 3)) = 2 log(4/3)
        tensor(0.5754)

    Args:
        logits: ``[B, C]`` raw outputs, ``C >= 2``.
        targets: ``[B]`` class indices or ``[B, C]`` soft targets.
        class_counts: ``[C]`` training images per class.
        reduction: ``"mean"`` (batch mean, default), ``"sum"`` or ``"none"``.
    """
    _check_targets(targets, logits)
    if logits.shape[-1] < 2:
        raise ValueError("balanced_bce_loss needs at least 2 classes (one class has prior 1 and infinite log-odds)")
    log_counts = _log_counts(class_counts, logits)
    log_prior = log_counts - torch.logsumexp(log_counts, 0)
    adjusted = logits.float() + (log_prior - torch.log1p(-log_prior.exp()))
    if targets.dim() == 1:
        targets = F.one_hot(targets, adjusted.shape[-1]).to(adjusted.dtype)
    per_sample = F.binary_cross_entropy_with_logits(adjusted, targets.to(adjusted.dtype), reduction="none").sum(-1)
    return _reduce(per_sample, reduction)


class LongTailLoss(nn.Module):
    """A loss over the merged label space that owns its class counts: ``forward(logits, targets, reduction)``.

    Subclasses set :attr:`function` (the pure loss above) and pass any further inputs through :meth:`extra`.

    Args:
        class_counts: ``[C]`` images per class (all positive); kept as a buffer, so ``.to(device)`` moves it.
    """

    function = staticmethod(cross_entropy_loss)
    #: How a model card names the loss.
    title = "plain cross-entropy"
    #: Whether the loss reads ``neighbor_pairs`` (a run without pairs then reduces it to balanced softmax).
    uses_neighbors = False

    def __init__(self, class_counts, **_):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float32).reshape(-1)
        self.register_buffer("class_counts", counts, persistent=False)

    def extra(self, logits: torch.Tensor) -> dict:
        """Keyword inputs of :attr:`function` beyond ``(logits, targets, class_counts, reduction)``."""
        return {}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.class_counts.device != logits.device:
            self.to(logits.device)
        return self.function(logits, targets, self.class_counts, reduction=reduction, **self.extra(logits))


class CrossEntropyLoss(LongTailLoss):
    """Plain cross-entropy (the counts are ignored). Example: ``create_loss("ce", counts)(logits, labels)``."""

    function = staticmethod(cross_entropy_loss)


class BalancedSoftmaxLoss(LongTailLoss):
    """Balanced softmax, eq. 2. Example: ``create_loss("balanced_softmax", counts)(logits, labels)``."""

    function = staticmethod(balanced_softmax_loss)
    title = "balanced softmax cross-entropy (no neighbor silencing)"


class BalancedBCELoss(LongTailLoss):
    """LiVT's balanced BCE. Example: ``create_loss("bal_bce", counts)(logits, labels)``."""

    function = staticmethod(balanced_bce_loss)
    title = "balanced binary cross-entropy"


class NeighborSilencingLoss(LongTailLoss):
    """Neighbor-silencing cross-entropy, eq. 4, with the neighbor lists precomputed once (:func:`neighbor_csr`).

    Example:
        >>> loss = NeighborSilencingLoss(torch.ones(3), neighbor_pairs=torch.tensor([[0, 2]]), lambda_s=0.1)
        >>> loss(torch.zeros(1, 3), torch.tensor([0]))  # log(1 + 1 + 0.1)
        tensor(0.7419)

    Args:
        class_counts: ``[C]`` images per class (for an auxiliary class: the images drawn per epoch).
        neighbor_pairs: ``[E, 2]`` (target class, auxiliary class) pairs; none gives balanced softmax.
        lambda_s: silencing factor, > 0.
    """

    function = staticmethod(neighbor_silencing_loss)
    title = "neighbor-silencing loss"
    uses_neighbors = True

    def __init__(self, class_counts, neighbor_pairs=None, lambda_s: float = 0.1, **_):
        super().__init__(class_counts)
        if not lambda_s > 0:
            raise ValueError(f"lambda_s must be positive, got {lambda_s}")
        self.lambda_s = float(lambda_s)
        pairs = torch.as_tensor(neighbor_pairs if neighbor_pairs is not None else [], dtype=torch.int64)
        ptr, neighbors = neighbor_csr(pairs.reshape(-1, 2), self.class_counts.numel())
        self.register_buffer("neighbor_pairs", pairs.reshape(-1, 2), persistent=False)
        self.register_buffer("ptr", ptr, persistent=False)
        self.register_buffer("neighbors", neighbors, persistent=False)

    def extra(self, logits: torch.Tensor) -> dict:
        return {"neighbor_pairs": self.neighbor_pairs, "lambda_s": self.lambda_s, "csr": (self.ptr, self.neighbors)}


#: The losses by the name a config selects them with (``loss:`` in a training YAML).
LOSSES: dict[str, type[LongTailLoss]] = {
    "ce": CrossEntropyLoss,
    "balanced_softmax": BalancedSoftmaxLoss,
    "neighbor_silencing": NeighborSilencingLoss,
    "bal_bce": BalancedBCELoss,
}
#: The pure function behind each loss name.
LOSS_FUNCTIONS = {name: cls.function for name, cls in LOSSES.items()}


def get_loss(name: str) -> type[LongTailLoss]:
    """The loss class registered as ``name``; a ``ValueError`` listing the valid names otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]


def create_loss(name: str, class_counts, neighbor_pairs=None, lambda_s: float = 0.1) -> LongTailLoss:
    """The loss module ``name`` over ``class_counts`` (inputs a loss does not read are ignored).

    Example:
        >>> criterion = create_loss("balanced_softmax", torch.tensor([10.0, 1.0]))
        >>> criterion(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
        tensor(3.3387)

    Args:
        name: one of :data:`LOSSES`.
        class_counts: ``[C]`` images per class of the merged label space, all positive.
        neighbor_pairs: ``[E, 2]`` (target, auxiliary) pairs, for the losses with ``uses_neighbors``.
        lambda_s: silencing factor (> 0), for ``neighbor_silencing``.
    """
    cls = get_loss(name)
    counts = torch.as_tensor(class_counts, dtype=torch.float32)
    if counts.dim() != 1 or not counts.numel():
        raise ValueError(f"class_counts must be a non-empty 1-D list of counts, got shape {tuple(counts.shape)}")
    if bool((counts <= 0).any()):
        raise ValueError(
            f"class_counts must be positive; classes {torch.nonzero(counts <= 0).flatten().tolist()} are not"
        )
    return cls(counts, neighbor_pairs=neighbor_pairs, lambda_s=lambda_s)
