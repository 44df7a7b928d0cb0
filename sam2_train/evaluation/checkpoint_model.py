"""A trained checkpoint as a label-free predictor, built from its own config alone
(:meth:`TrainConfig.from_dict` of ``checkpoint["config"]``): ``evaluate.py`` and ``predict.py`` use it."""
from __future__ import annotations

from dataclasses import dataclass

from sam2_train.engine.checkpoint import ConfigMismatchError, load_checkpoint, load_model_state
from sam2_train.engine.config import TrainConfig
from sam2_train.engine.device import autocast
from sam2_train.engine.distributed import init_distributed
from sam2_train.engine.trusted_config import trusted_sam_config
from sam2_train.methods.networks import Network, network
from sam2_train.methods.registry import method_class
from sam2_train.model.build import WEIGHTS_FROM_CHECKPOINT
from sam2_train.model.sam_guide import build_sam_guide

__all__ = ["LoadedModel", "checkpoint_config", "load_model", "model_from_checkpoint"]


@dataclass
class LoadedModel:
    """A checkpoint's network in eval mode on ``device``, its config (with the overrides), which weights it
    holds (``ema`` or ``student``), and the SAM-2 guide of a lightweight student's ``-infer sam_refine``."""
    net: object
    config: TrainConfig
    network: Network
    device: object
    weights: str
    amp: str = "auto"
    guide: object = None

    def autocast(self):
        return autocast(self.device, self.amp)

    def predictor(self):
        """``predict(image (D,H,W) f32 [0,1], spacing) -> labels (D,H,W)``: the evaluation loop's predictor."""
        return lambda image, spacing: self.network.predict(self.net, image, config=self.config,
                                                           infer=self.config.infer.infer, device=self.device,
                                                           autocast=self.autocast, guide=self.guide)


def checkpoint_config(state: dict, ckpt: str, overrides: dict | None = None) -> TrainConfig:
    """The config a checkpoint was trained with, with ``overrides`` ``{section: {field: value}}`` (None values
    ignored) applied. Its SAM-2 config must be a built-in one unless ``overrides`` names one (a checkpoint cannot
    name a yaml to run)."""
    config = TrainConfig.from_dict(state.get("config"), ckpt)
    overrides = {s: {k: v for k, v in fields.items() if v is not None} for s, fields in (overrides or {}).items()}
    if not overrides.get("model", {}).get("sam_config"):
        config = config.replace(model={"sam_config": trusted_sam_config(config.model.sam_config, ckpt)})
    return config.replace(**{s: f for s, f in overrides.items() if f})


def load_model(ckpt: str, *, weights: str = "auto", device: str = "auto", gpu_device: int = 0, amp: str = "auto",
               overrides: dict | None = None) -> LoadedModel:
    """Build the network of checkpoint ``ckpt`` from its config and load its weights (strict); see
    :func:`model_from_checkpoint`."""
    state = load_checkpoint(ckpt)
    return model_from_checkpoint(state, checkpoint_config(state, ckpt, overrides), ckpt, weights, device=device,
                                 gpu_device=gpu_device, amp=amp)


def model_from_checkpoint(state: dict, config: TrainConfig, ckpt: str, weights: str = "auto", *, device: str = "auto",
                          gpu_device: int = 0, amp: str = "auto") -> LoadedModel:
    """The network of a loaded checkpoint ``state`` (read from ``ckpt``) built from ``config``. ``weights``:
    ``auto`` (the EMA of the weights when the checkpoint has one, what validation selected on), ``ema`` (an error
    without one) or ``student``/``model``."""
    net_kind = network(config.model.student)
    if config.infer.infer not in net_kind.infer_modes:
        raise ConfigMismatchError(f"{ckpt}: -infer {config.infer.infer} does not fit -student {config.model.student} "
                                  f"(choose from {', '.join(net_kind.infer_modes)})")
    dev = init_distributed(device=device, gpu_device=gpu_device, distributed="none").device
    net = net_kind.build(config.model, device=dev, sam_ckpt=WEIGHTS_FROM_CHECKPOINT)
    use_ema = weights == "ema" or (weights == "auto" and state.get("ema") is not None)
    if use_ema and state.get("ema") is None:
        raise ConfigMismatchError(f"{ckpt}: -weights ema, but the checkpoint has no EMA of the weights")
    load_model_state(net, state["ema"]["module"] if use_ema else state["model"], strict=True)
    net.eval()
    m = config.model
    guide = None
    if config.infer.infer == "sam_refine":
        klass = method_class(config.semi.method, m.student, config.run.script)
        guide = build_sam_guide(m.sam_config, m.sam_ckpt, m.guide_size, dev, lambda: autocast(dev, amp),
                                trainable=klass.guide_trainable(config))
        if state.get("extra"):                   # e.g. SAM-Match's fine-tuned SAM-2
            klass(net, config, guide=guide).load_extra_state(state["extra"], ckpt, with_optimizers=False)
    return LoadedModel(net=net, config=config, network=net_kind, device=dev, weights="ema" if use_ema else "student",
                       amp=amp, guide=guide)
