import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from neighbor_lt.configs import NeighborLTTrainingArguments
from neighbor_lt.data import AuxiliaryCappedSampler
from neighbor_lt.losses import neighbor_silencing_loss
from neighbor_lt.trainer import NeighborSilencingTrainer

NUM_TARGETS, NUM_AUX = 3, 2
COUNTS = torch.tensor([40.0, 10.0, 3.0, 5.0, 5.0])
PAIRS = torch.tensor([[1, 3], [2, 4]])


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = torch.randint(0, NUM_TARGETS + NUM_AUX, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": int(self.y[i])}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8, num_labels=NUM_TARGETS + NUM_AUX)  # fmt: skip
    return ViTForImageClassification(config)


def make_trainer(tmp_path, model, **overrides):
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, learning_rate=0.1,
                  optim="sgd", weight_decay=0.0, report_to="none", save_strategy="no", seed=0, use_cpu=True,
                  remove_unused_columns=False, loss="neighbor_silencing", lambda_s=0.1, warmup_steps=0,
                  lr_scheduler_type="constant", dataloader_num_workers=0, logging_steps=1)  # fmt: skip
    kwargs.update(overrides)
    args = NeighborLTTrainingArguments(**kwargs)
    data = TensorImages()
    sampler = torch.utils.data.SequentialSampler(data)
    return NeighborSilencingTrainer(model=model, args=args, train_dataset=data, class_counts=COUNTS,
                                    neighbor_pairs=PAIRS, num_target_classes=NUM_TARGETS, train_sampler=sampler)  # fmt: skip


def test_compute_loss_is_the_neighbor_silencing_loss(tmp_path):
    model = tiny_model()
    trainer = make_trainer(tmp_path, model)
    data = TensorImages()
    batch = {"pixel_values": data.x[:4], "labels": data.y[:4]}
    loss = trainer.compute_loss(model, dict(batch))
    logits = model(pixel_values=batch["pixel_values"]).logits
    expected = neighbor_silencing_loss(logits, batch["labels"], COUNTS, PAIRS, lambda_s=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # with num_items_in_batch the loss is a sum over the micro-batch divided by the items of the whole step
    loss_ga = trainer.compute_loss(model, dict(batch), num_items_in_batch=8)
    assert loss_ga.item() == pytest.approx(expected.item() * 4 / 8, rel=1e-6)
    # evaluation sees only the target rows (the masked model)
    model.eval()
    _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert outputs["logits"].shape == (4, NUM_TARGETS)


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    big = tiny_model()
    make_trainer(tmp_path / "a", big, per_device_train_batch_size=8, gradient_accumulation_steps=1).train()
    small = tiny_model()
    make_trainer(tmp_path / "b", small, per_device_train_batch_size=4, gradient_accumulation_steps=2).train()
    untouched = tiny_model()
    moved = False
    for (name, p_big), p_small, p_init in zip(big.named_parameters(), small.parameters(), untouched.parameters()):
        assert torch.allclose(p_big, p_small, atol=1e-6), name
        moved |= not torch.allclose(p_big, p_init)
    assert moved  # the step did change the weights


def test_trainer_uses_the_capped_sampler(tmp_path):
    model = tiny_model()
    trainer = make_trainer(tmp_path, model)
    sampler = AuxiliaryCappedSampler(10, np.array([0] * 6), max_aux_per_class=2, seed=0)
    trainer.train_sampler = sampler
    assert trainer._get_train_sampler() is sampler
    assert len(trainer.get_train_dataloader()) == 2  # (10 + 2) images / batch 8, rounded up


def test_unknown_loss_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        make_trainer(tmp_path, tiny_model(), loss="focal")


def test_layer_decay_optimizer_groups(tmp_path):
    trainer = make_trainer(tmp_path, tiny_model(), layer_decay=0.5, optim="adamw_torch", adam_beta2=0.95)
    optimizer = trainer.create_optimizer()
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([0.1 * 0.25, 0.1 * 0.5, 0.1])  # embeddings, block 0, head
    assert optimizer.defaults["betas"] == (0.9, 0.95)


class RecordingSampler(AuxiliaryCappedSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs_seen = []

    def __iter__(self):
        self.epochs_seen.append(self.epoch)
        return super().__iter__()


def test_trainer_draws_a_fresh_aux_subset_every_epoch(tmp_path):
    # 10 target rows + 6 auxiliary rows of one class, cap 2: every epoch draws 2 of the 6, seeded by the epoch.
    aux_labels = np.zeros(6, dtype=np.int64)
    sampler = RecordingSampler(10, aux_labels, max_aux_per_class=2, seed=0)
    trainer = make_trainer(tmp_path, tiny_model(), max_steps=-1, num_train_epochs=3, per_device_train_batch_size=4)
    trainer.train_sampler = sampler
    trainer.train()
    assert sampler.epochs_seen == [0, 1, 2]  # the Trainer moves the sampler's epoch forward
    draws = [set(sampler.epoch_indices(e)[sampler.epoch_indices(e) >= 10].tolist()) for e in range(3)]
    assert all(len(d) == 2 for d in draws) and len({frozenset(d) for d in draws}) > 1
