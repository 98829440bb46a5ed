"""The plain (single-process) engine: the model plus one Adam per parameter group.

Optimizer groups never share state: "collab" (Z^{l,u}, Z^{l,v}) and "content" (Z^{c,u}, Z^{c,v}) for
pretraining, "rec" and "rec_content" for finetuning (fresh state, finetuning learning rate), and
"backbone" / "rec_backbone" when the backbone or a LoRA adapter is trained. A step changes only the groups it names.
"""
from __future__ import annotations

import torch

from cllm4rec.model import CLLM4Rec
from trainer.data import Batch

class PlainEngine:
    """Runs forward/backward/step in one process (no launcher)."""

    def __init__(self, model: CLLM4Rec, pretrain_lr: float, finetune_lr: float):
        self.model = model
        self.device = model.collab_item.device
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "collab": torch.optim.Adam(model.table_parameters("collab"), lr=pretrain_lr),
            "content": torch.optim.Adam(model.table_parameters("content"), lr=pretrain_lr),
            "rec": torch.optim.Adam(model.table_parameters("collab"), lr=finetune_lr),
            "rec_content": torch.optim.Adam(model.table_parameters("content"), lr=finetune_lr),
        }
        backbone = model.backbone_parameters()
        if backbone:
            self.optimizers["backbone"] = torch.optim.Adam(backbone, lr=pretrain_lr)
            self.optimizers["rec_backbone"] = torch.optim.Adam(backbone, lr=finetune_lr)

    def train_step(self, task: str, batch: Batch, optimizer: str) -> dict[str, float]:
        """One update of `optimizer`'s parameters (and the trainable backbone, if any) on `batch`."""
        self.model.train()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        out = self.model(task, **self.to_device(batch))
        out["loss"].backward()
        self.optimizers[optimizer].step()
        backbone = "rec_backbone" if optimizer.startswith("rec") else "backbone"
        if backbone in self.optimizers:
            self.optimizers[backbone].step()
        return {k: float(v.detach()) for k, v in out.items()}

    @torch.no_grad()
    def item_logits(self, batch: Batch) -> torch.Tensor:
        """Whole-catalogue item logits [B, J] at each prompt's last position."""
        self.model.eval()
        return self.model("score", **self.to_device(batch))["logits"]

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
