"""Label-free evaluation of a network on whole volumes, in one inference mode (the training run's validation and
final evaluation, ``evaluate.py``). The network predicts from the image alone (:class:`sam2_train.methods.networks.
Network`); labels are read only afterwards, to score the prediction (:func:`evaluation.loop.evaluate_volumes`)."""
from __future__ import annotations

from typing import Callable, Collection

from sam2_train.evaluation.loop import EvalResult, evaluate_volumes
from sam2_train.evaluation.vis import save_overlays

__all__ = ["evaluate_model"]


def evaluate_model(network, net, volumes, config, *, infer: str, device, autocast, split: str, max_volumes: int = 0,
                   vis_dir: str | None = None, save_pred: Callable | None = None, keep: Collection[str] = (),
                   guide=None) -> EvalResult:
    """``net`` (a ``network`` of :mod:`sam2_train.methods.networks`) on ``volumes`` in inference mode ``infer``;
    the predictions of the volumes named in ``keep`` (all with ``vis_dir``, which also gets overlays) are returned
    in ``EvalResult.predictions``. ``guide``: the SAM-2 guide of a lightweight student (``-infer sam_refine``)."""
    net.eval()
    protocol = config.infer.protocol if config.run.script == "2d" and config.data.acdc_protocol else "volume"
    res = evaluate_volumes(volumes, lambda image, spacing: network.predict(net, image, config=config, infer=infer,
                                                                           device=device, autocast=autocast,
                                                                           guide=guide),
                           list(config.data.class_names), protocol=protocol, split=split, max_volumes=max_volumes,
                           save_pred=save_pred, keep_predictions=True if vis_dir is not None else keep)
    res.summary["infer"] = infer
    if vis_dir is not None:  # overlays of the volumes just evaluated (labels drawn beside the prediction)
        for i in range(len(res.predictions)):
            save_overlays(vis_dir, volumes[i], res.predictions[volumes[i]["name"]])
    return res
