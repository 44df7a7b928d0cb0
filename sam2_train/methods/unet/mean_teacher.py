"""Mean teacher (SSL4MIS, ``-method mean_teacher``): the MSE between the student's and the EMA teacher's softmax
on noisy unlabeled slices (noise N(0, 0.1) clipped to +-0.2), weight ``-lambda_u`` 0.1 ramped up over the whole
budget (SSL4MIS: ``sigmoid_rampup(iter // 150, 200)`` reaches 1 at 30000 = max_iterations)."""
from __future__ import annotations

import torch

from sam2_train.methods.base import lambda_u
from sam2_train.methods.registry import register
from sam2_train.methods.unet.base import UNetMethod, mse_probs


@register
class MeanTeacher(UNetMethod):
    name, summary = "mean_teacher", "SSL4MIS mean teacher"

    @classmethod
    def defaults(cls, config) -> dict:
        return {"semi": {"lambda_u": 0.1, "rampup": config.run.max_iters}}

    def unlabeled_loss(self, batch_u, iteration, cw):
        x_w = batch_u["image_w"].flatten(0, 1)                                       # (N,1,S,S)
        return self.consistency(x_w, self.net.heads(x_w), iteration), {}

    def consistency(self, x_w: torch.Tensor, heads: list, iteration: int) -> torch.Tensor:
        """lambda_u(t) * MSE(student heads, teacher on x_w + noise)."""
        noise = (torch.randn_like(x_w) * 0.1).clamp(-0.2, 0.2)                      # SSL4MIS's input noise
        with torch.no_grad():
            p_t = self.teacher(x_w + noise).float().softmax(1)
        return lambda_u(self.semi, iteration) * mse_probs(heads, p_t)
