"""``NeighborSilencingTrainer``: a ``transformers.Trainer`` whose loss is a long-tail loss over targets + neighbors."""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

from .augment import MixupCutmix
from .losses import create_loss
from .modeling import layerwise_param_groups

logger = logging.getLogger(__name__)


class NeighborSilencingTrainer(Trainer):
    """Trainer with ``ce`` / ``balanced_softmax`` / ``neighbor_silencing`` / ``bal_bce`` losses.

    Only ``compute_loss`` (plus the optimizer's layer-wise lr decay and the per-epoch auxiliary sampler) differs
    from ``Trainer``. The loss is normalised by ``num_items_in_batch`` when the Trainer passes it, so gradient
    accumulation and multi-process runs give the same gradient as one large batch.

    Example:
        >>> trainer = NeighborSilencingTrainer(model=model, args=training_args, train_dataset=train,
        ...     class_counts=counts, neighbor_pairs=pairs, num_target_classes=20)
        >>> trainer.train()

    Args:
        class_counts: ``[C]`` images per class of the merged label space (auxiliary: draws per epoch).
        neighbor_pairs: ``[E, 2]`` (target, auxiliary) pairs, for ``neighbor_silencing``.
            ``class_counts``, ``neighbor_pairs`` and ``args.lambda_s`` go to :func:`~neighbor_lt.losses.create_loss`
            with ``args.loss``; the resulting module is ``self.criterion``.
        num_target_classes: ``L``; evaluation predicts over the target rows only (the auxiliary rows are masked).
        train_sampler: a sampler for the training set (e.g. ``AuxiliaryCappedSampler``).
        batch_augment: turns uint8 ``pixel_values`` batches (the tensor input pipeline,
            :class:`~neighbor_lt.pixels.CachedImageDataset`) into normalised, augmented pixels on the device
            (:class:`~neighbor_lt.pixels.BatchAugment`); float batches pass through untouched.
        **kwargs: passed to ``Trainer``; ``args`` is a ``NeighborLTTrainingArguments``.
    """

    # compute_loss below normalises by num_items_in_batch itself whenever the Trainer passes it.
    loss_is_scaled_for_ga = None

    def __init__(
        self,
        *args,
        class_counts,
        neighbor_pairs=None,
        num_target_classes=None,
        train_sampler=None,
        batch_augment=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.batch_augment = batch_augment
        self.criterion = create_loss(
            self.args.loss, class_counts, neighbor_pairs=neighbor_pairs, lambda_s=self.args.lambda_s
        )
        num_classes = self.criterion.class_counts.numel()
        self.num_target_classes = num_target_classes or num_classes
        self.train_sampler = train_sampler
        self.mixup = MixupCutmix(
            num_classes,
            mixup_alpha=self.args.mixup_alpha,
            cutmix_alpha=self.args.cutmix_alpha,
            prob=self.args.mixup_prob,
            switch_prob=self.args.mixup_switch_prob,
            label_smoothing=self.args.label_smoothing,
        )
        # The model's own loss is never used; ask the Trainer to always count items so the loss is exact under
        # gradient accumulation and across processes.
        self.model_accepts_loss_kwargs = True

    def _get_train_sampler(self, train_dataset=None):
        if self.train_sampler is not None and (train_dataset is None or train_dataset is self.train_dataset):
            return self.train_sampler
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.args.layer_decay:
            opt_model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            groups = layerwise_param_groups(
                opt_model, self.args.learning_rate, self.args.weight_decay, self.args.layer_decay
            )
            for group in groups:
                group.pop("names")
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        targets = labels
        if inputs["pixel_values"].dtype == torch.uint8:
            if self.batch_augment is None:
                raise ValueError("uint8 pixel_values (the tensor input pipeline) need batch_augment")
            inputs["pixel_values"] = self.batch_augment(inputs["pixel_values"], train=model.training)
        if model.training and self.mixup.active:
            inputs["pixel_values"], targets = self.mixup(inputs["pixel_values"], labels)
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if num_items_in_batch is None:
            loss = self.criterion(logits, targets, reduction="mean")
        else:
            loss = self.criterion(logits, targets, reduction="sum") / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        if return_outputs:
            # Evaluation sees the masked model: predictions over the target rows only.
            outputs["logits"] = logits[:, : self.num_target_classes]
            return loss, outputs
        return loss
