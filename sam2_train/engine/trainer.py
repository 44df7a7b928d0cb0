"""The training engine shared by ``train_2d.py`` and ``train_3d.py``.

:meth:`Trainer.fit` is the table of contents of a run: set up, then per iteration the method's hook, a training
step, logging, validation every ``val_every`` iterations and checkpoints, then the final evaluation. What is
trained comes from the config alone: the network of ``-student`` (:mod:`sam2_train.methods.networks`) and the
method class of ``-method`` (:mod:`sam2_train.methods.registry`), whose declarations say whether the run needs
unlabeled views, an EMA teacher or a SAM-2 guide.

Fair comparison, by construction: every ``-method`` runs the same ``max_iters`` iterations, validates at
the same iterations, is validated and reported from the same kind of weights (the EMA of the weights when
``ema > 0``, for every method) and with the same inference mode (``infer``); the checkpoint is selected on
the validation split only.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import numpy as np
import torch
from tqdm import tqdm

from sam2_train.engine.checkpoint import (check_pretrain_config, check_resume_config, gather_rng_states,
                                          load_checkpoint, load_model_state, make_checkpoint, remove_stale_tmp_files,
                                          restore_training_state, resume_record, save_checkpoint, saved_config,
                                          saved_world_size, weights_only, world_size_change_message)
from sam2_train.engine.config import TrainConfig
from sam2_train.engine.device import autocast, enable_tf32, seed_everything
from sam2_train.engine.distributed import DistInfo, average_gradients, barrier, wrap_ddp
from sam2_train.engine.ema import ModelEMA
from sam2_train.engine.guard import NonFiniteGuard
from sam2_train.engine.run_dir import RunDir, write_json_atomic
from sam2_train.engine.sampling import InfiniteLoader, make_loader
from sam2_train.engine.schedule import build_optimizer, build_scheduler, current_lrs
from sam2_train.evaluation.evaluate import evaluate_model
from sam2_train.evaluation.loop import EvalResult, format_summary, write_case_rows
from sam2_train.evaluation.vis import montage_slices, save_summary
from sam2_train.methods.networks import network
from sam2_train.methods.registry import method_class
from sam2_train.model.levers import compile_encoders
from sam2_train.model.build import WEIGHTS_FROM_CHECKPOINT
from sam2_train.model.sam_guide import build_sam_guide

__all__ = ["Trainer", "TrainingInterrupted"]


class TrainingInterrupted(Exception):
    """Ctrl-C: the run stopped at an iteration boundary after saving ``last.pt``; the message says how to resume."""


@contextlib.contextmanager
def stop_on_interrupt(enabled: bool):
    """``with stop_on_interrupt(True) as stop``: the first Ctrl-C (SIGINT) sets ``stop.is_set()`` instead of raising
    in the middle of a step; a second one raises KeyboardInterrupt at once. Off (``enabled`` False: several
    processes, whose checkpoint save is collective, or not the main thread) it changes nothing."""
    stop = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(*_):              # (signal number, frame)
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Trainer:
    """One training run of ``config`` on ``splits`` (``labeled``, ``unlabeled`` (or None), ``val``, ``test`` (or
    None) datasets, ``class_names``, ``case_names``, ``summary()``, ``pseudo_labeled(...)``); ``config.to_dict()``
    is written to ``config.json`` and every checkpoint."""

    def __init__(self, config: TrainConfig, splits, dist: DistInfo):
        self.config, self.run, self.splits, self.dist = config, config.run, splits, dist
        self.device = dist.device
        self.class_names = list(splits.class_names)
        self.method_cls = method_class(config.semi.method, config.model.student, config.run.script)
        self.network = network(config.model.student)

    def autocast(self):
        return autocast(self.device, self.run.amp)

    # ------------------------------------------------------------------ table of contents
    def fit(self) -> int:
        self.setup()
        with stop_on_interrupt(self.dist.world_size == 1) as stop:
            for it in self.progress:
                self.method.on_iteration_start(self, it)
                out = self.train_step(it)
                self.log_step(it + 1, out)
                self.maybe_validate(it + 1)
                self.maybe_save(it + 1)
                if stop.is_set():
                    self.interrupt(it + 1)
        return self.final_evaluation()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        run, dist, config, m = self.run, self.dist, self.config, self.config.model
        seed_everything(run.seed, dist.rank)
        enable_tf32()
        resume = load_checkpoint(run.resume) if run.resume else None
        if resume is not None:
            resume_changes = check_resume_config(saved_config(resume, run.resume), config, force=run.resume_force,
                                                 source=run.resume)
        self.net = self.network.build(m, device=self.device,
                                      sam_ckpt=WEIGHTS_FROM_CHECKPOINT if resume is not None else None)
        # the SAM-2 guide comes from -sam_ckpt; only a method that fine-tunes it saves it with the run
        self.guide = (build_sam_guide(m.sam_config, m.sam_ckpt, m.guide_size, self.device, self.autocast,
                                      trainable=self.method_cls.guide_trainable(config))
                      if self.method_cls.needs_guide or config.infer.infer == "sam_refine" else None)
        if run.pretrain and resume is None:
            state = load_checkpoint(run.pretrain)
            check_pretrain_config(saved_config(state, run.pretrain), config, source=run.pretrain)
            load_model_state(self.net, state["model"], strict=True)

        self.loader_l = make_loader(self.splits.labeled, run.batch_size, seed=run.seed,
                                    num_workers=run.num_workers, dist=dist)
        self.semi_supervised = self.method_cls.needs_unlabeled
        self.loader_u = (make_loader(self.splits.unlabeled, self.method_cls.unlabeled_items(config), seed=run.seed,
                                     num_workers=run.num_workers, dist=dist)
                         if self.semi_supervised and self.method_cls.unlabeled_views else None)
        self.optimizer = build_optimizer(self.net, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, run.max_iters)
        self.ema = ModelEMA(self.net, run.ema) if run.ema > 0 else None   # every method: EMA weights are evaluated
        self.guard = NonFiniteGuard(run.max_bad_steps)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.best = {"metric": "dice", "value": -1.0, "iteration": 0}
        teacher = self.ema.module if (self.ema is not None and self.semi_supervised) else self.net
        self.method = self.method_cls(self.net, config, teacher=teacher, guide=self.guide, autocast=self.autocast)
        self.extra_optimizers = self.method.extra_optimizers()
        start = 0
        if resume is not None:
            info = restore_training_state(resume, self.net, optimizer=self.optimizer, scheduler=self.scheduler,
                                          ema=self.ema)
            start, self.best = info["iteration"], info["best"] or self.best
            self.guard.load_state_dict(resume.get("guard", {}))
            self.method.load_extra_state(resume.get("extra"), run.resume)
            self.run_dir = RunDir.open(run.resume, is_main=dist.is_main, resume_iteration=start)
            self.run_dir.record_resume(resume_record(resume, run.resume, resume_changes, dist.world_size))
            stale = remove_stale_tmp_files(self.run_dir.path) if dist.is_main else []
        else:
            self.run_dir = RunDir.create(run.log_dir, run.exp_name, config.to_dict(), is_main=dist.is_main)
            if dist.is_main:
                write_json_atomic(os.path.join(self.run_dir.path, "splits.json"), self.splits.case_names)
        if run.compile:
            compile_encoders(self.net, *([self.ema.module] if self.ema is not None else []))
        # find_unused_parameters: a step uses only part of SAM-2 (2D never runs the memory modules; prompts and
        # the unlabeled branch vary per step), and DDP must not wait for gradients that never come.
        self.student = wrap_ddp(self.method.to(self.device), dist, find_unused_parameters=True)
        self.batches_l = InfiniteLoader(self.loader_l, start_iter=start)
        self.batches_u = InfiniteLoader(self.loader_u, start_iter=start) if self.loader_u else None
        self.progress = tqdm(range(start, run.max_iters), initial=start, total=run.max_iters, desc="train",
                             disable=not dist.is_main, dynamic_ncols=True)
        self._sums, self._n, self._t0 = {}, 0, time.time()
        self.last_saved = start                  # the iteration last.pt holds (a resume starts from it)
        self.load_pcsw_interval_state(resume.get("pcsw_interval") if resume is not None else None)

        log = self.run_dir.log
        log(self.splits.summary())
        log(f"run directory: {self.run_dir.path}" if dist.is_main else "")
        if resume is not None:
            log(f"resumed from {run.resume} at iteration {start}/{run.max_iters}")
            if stale:
                log(f"removed {len(stale)} temporary file(s) of interrupted saves: {', '.join(stale)}")
            if resume_changes:
                log("warning: -resume_force 1: continuing with changed settings: " + "; ".join(
                    f"{k}: {old!r} -> {new!r}" for k, (old, new) in resume_changes.items()))
            ws_change = world_size_change_message(saved_world_size(resume), dist.world_size, batch=run.batch_size,
                                                  source=run.resume)
            if ws_change:
                log(f"warning: {ws_change}")
        name = m.sam_config if m.student == "sam2" else f"{m.student} student" + (
            f", {m.sam_config} guide @ {m.guide_size}px" + (" (fine-tuned)" if self.guide.trainable else "")
            if self.guide is not None else "")
        log(f"{config.semi.method} | {name} @ {m.image_size}px | DFE {int(m.dfe)} "
            f"PCSW {int(getattr(config.method, 'pcsw', False))} | {run.max_iters} iterations, validation every "
            f"{run.val_every} ({self.weights_kind} weights, infer {config.infer.infer}) on {self.device}, world size "
            f"{dist.world_size}")

    @property
    def weights_kind(self) -> str:
        return "ema" if self.ema is not None else "student"

    @property
    def eval_net(self):
        return self.ema.module if self.ema is not None else self.net

    # ------------------------------------------------------------------ what a method's hooks may use
    @property
    def has_unlabeled(self) -> bool:
        return self.batches_u is not None

    def set_unlabeled(self, dataset, start_iter: int = 0) -> None:
        """Unlabeled batches from ``dataset`` from now on (``start_iter`` batches of it already consumed)."""
        loader = make_loader(dataset, self.method_cls.unlabeled_items(self.config), seed=self.run.seed,
                             num_workers=self.run.num_workers, dist=self.dist)
        self.batches_u = InfiniteLoader(loader, start_iter=start_iter)

    def predict(self, image: np.ndarray, infer: str) -> np.ndarray:
        """Labels (D,H,W) of an image volume by the evaluated weights in inference mode ``infer``."""
        return self.network.predict(self.eval_net, image, config=self.config, infer=infer, device=self.device,
                                    autocast=self.autocast, guide=self.guide)

    @staticmethod
    def barrier() -> None:
        barrier()

    # ------------------------------------------------------------------ one iteration
    def train_step(self, it: int) -> dict:
        self.student.train()
        batch_l = _to(next(self.batches_l), self.device)
        batch_u = _to(next(self.batches_u), self.device) if self.batches_u is not None else None
        out = self.student(batch_l, batch_u, it)
        for opt in (self.optimizer, *self.extra_optimizers):
            opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        clip = self.config.optim.clip_grad   # the norm is computed without clipping too: the guard reads it
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip if clip > 0 else float("inf"))
        # one host sync per step: skip the update when the loss or any gradient is not finite; the same sync
        # reads the finiteness of the weights the previous update produced
        if self.guard.check(out["loss"].detach().float() + grad_norm, it + 1):
            self.optimizer.step()
            for opt in self.extra_optimizers:   # outside DDP: their gradients are averaged over the ranks here
                average_gradients(p for g in opt.param_groups for p in g["params"])
                opt.step()
            self.guard.watch_weights(self.trainable, it + 1)
            if self.ema is not None:
                self.ema.update(self.net)
        self.scheduler.step()
        return out

    def log_step(self, done: int, out: dict) -> None:
        for key, v in out.items():   # accumulated on device; fetched once per log interval
            self._sums[key] = self._sums.get(key, 0.0) + v.detach().float()
            if key.startswith("pcsw_"):  # and once per validation, for metrics.csv
                self._pcsw_sums[key] = self._pcsw_sums.get(key, 0.0) + v.detach().float()
        self._n += 1
        self._pcsw_n += 1
        if done % self.run.log_freq and done != self.run.max_iters:
            return
        keys = list(self._sums)
        means = {k: v / self._n for k, v in zip(keys, torch.stack([self._sums[k] for k in keys]).cpu().tolist())}
        means.update(current_lrs(self.optimizer))
        means["it_per_s"] = self._n / max(1e-9, time.time() - self._t0)
        self.run_dir.log_scalars(done, means, prefix="train/")
        self.progress.set_postfix(loss=f"{means['loss']:.3f}")
        self._sums, self._n, self._t0 = {}, 0, time.time()

    def is_validation_iteration(self, done: int) -> bool:
        return done % self.run.val_every == 0 or done == self.run.max_iters

    def maybe_validate(self, done: int) -> None:
        """Validate the evaluated weights on the validation split; keep the best by mean Dice."""
        if not self.is_validation_iteration(done):
            return
        self.guard.require_finite_weights()  # collective; non-finite weights are never validated or saved
        improved = False
        if self.dist.is_main:
            vis_dir = os.path.join(self.run_dir.vis_dir, f"iter{done:06d}") if self.run.vis else None
            res = evaluate_model(self.network, self.eval_net, self.splits.val, self.config,
                                 infer=self.config.infer.infer, device=self.device, autocast=self.autocast,
                                 split="val", max_volumes=self.run.val_volumes, vis_dir=vis_dir, guide=self.guide)
            self.record_validation(done, res)
            dice = res.summary["dice"]["mean"]
            improved = bool(np.isfinite(dice) and dice > self.best["value"])
            if improved:
                self.best = {"metric": "dice", "value": float(dice), "iteration": done}
        self.save(("last", "best") if improved else ("last",), done)
        barrier()

    def pcsw_interval_rates(self) -> dict:
        """Mean PCSW accept/fallback/reject rate per class over the training steps since the last validation
        (``pcsw_<rate>_<class name>``; one host sync), then reset; {} without PCSW."""
        keys = sorted(self._pcsw_sums)
        if not keys:
            return {}
        values = torch.stack([self._pcsw_sums[k] for k in keys]).cpu().tolist()
        names = {f"_{i + 1}": f"_{c}" for i, c in enumerate(self.class_names)}
        out = {k.rsplit("_", 1)[0] + names["_" + k.rsplit("_", 1)[1]]: v / max(1, self._pcsw_n)
               for k, v in zip(keys, values)}
        self._pcsw_sums, self._pcsw_n = {}, 0
        return out

    def pcsw_interval_state(self) -> dict:
        """The PCSW rate sums since the last validation (saved with every checkpoint, so that a resumed run's
        metrics.csv equals an uninterrupted one's)."""
        return {"n": self._pcsw_n, "sums": {k: float(v) for k, v in self._pcsw_sums.items()}}

    def load_pcsw_interval_state(self, state: dict | None) -> None:
        state = state or {}
        self._pcsw_n = int(state.get("n", 0))
        self._pcsw_sums = {k: torch.tensor(v, dtype=torch.float32, device=self.device)
                           for k, v in (state.get("sums") or {}).items()}

    def record_validation(self, done: int, res: EvalResult) -> None:
        s, names = res.summary, (*self.class_names, "mean")
        self.run_dir.append_metrics_row({"iteration": done,
                                         **{f"{m}_{c}": s[m][c] for m in ("dice", "jaccard", "hd95", "asd")
                                            for c in names}, **self.pcsw_interval_rates()})
        self.run_dir.log_scalars(done, {f"{m}/{c}": s[m][c] for m in ("dice", "hd95") for c in names}, prefix="val/")
        self.run_dir.log(f"[iter {done}] val mean Dice {s['dice']['mean'] * 100:.2f} % ("
                         + ", ".join(f"{c} {s['dice'][c] * 100:.1f} %" for c in self.class_names) + ")")

    def interrupt(self, done: int) -> None:
        """Ctrl-C: save ``last.pt`` at this iteration boundary (unless it was just saved) and stop."""
        self.progress.close()
        last = self.run_dir.checkpoint_path("last")
        if self.last_saved != done:
            self.save(("last",), done)
        raise TrainingInterrupted(f"interrupted at iteration {done}/{self.run.max_iters}; resume with -resume {last}")

    def maybe_save(self, done: int) -> None:
        if self.run.save_freq and done % self.run.save_freq == 0 and not self.is_validation_iteration(done):
            self.save(("last",), done)

    def save(self, names: tuple[str, ...], iteration: int) -> None:
        """Write the checkpoints ``names`` (``last`` first) atomically; every rank calls it (the random states
        of all ranks are gathered into the main rank's checkpoint)."""
        self.guard.require_finite_weights()  # collective; non-finite weights never reach a checkpoint
        rng = gather_rng_states()
        if not self.dist.is_main:
            return
        state = make_checkpoint(self.net, self.config.to_dict(), optimizer=self.optimizer, scheduler=self.scheduler,
                                ema=self.ema, rng=rng, iteration=iteration, epoch=iteration // self.run.val_every,
                                best=self.best, guard=self.guard.state_dict(), world_size=self.dist.world_size,
                                extra=self.method.extra_state(), pcsw_interval=self.pcsw_interval_state())
        for name in names:   # best.pt: weights only (evaluate.py, predict.py, -pretrain); last.pt resumes
            save_checkpoint(self.run_dir.checkpoint_path(name), weights_only(state) if name == "best" else state)
        if "last" in names:
            self.last_saved = iteration

    # ------------------------------------------------------------------ end of training
    def final_evaluation(self) -> int:
        """Evaluate the best checkpoint (selected on val) on the test split (val if there is none) in every
        inference mode; ``summary.json`` reports the run's mode and lists the others under ``by_infer``."""
        if not self.dist.is_main:
            return 0
        best_path = self.run_dir.checkpoint_path("best")
        net = self.eval_net
        if os.path.exists(best_path):
            state = load_checkpoint(best_path)
            load_model_state(net, state["ema"]["module"] if self.ema is not None else state["model"], strict=True)
            self.method.load_extra_state(state.get("extra"), best_path, with_optimizers=False)
        volumes, split = (self.splits.test, "test") if self.splits.test is not None else (self.splits.val, "val")
        if self.splits.test is None:
            self.run_dir.log(f"no test split ({self.splits.test_missing}); final numbers are on the validation split")
        drawn = self.picture_items(volumes)
        results = {}
        main = self.config.infer.infer
        modes = [m for m in self.network.infer_modes if m != main and (m != "sam_refine" or self.guide is not None)]
        for infer in (main, *modes):
            results[infer] = evaluate_model(self.network, net, volumes, self.config, infer=infer, device=self.device,
                                            autocast=self.autocast, split=split, guide=self.guide,
                                            keep=[item["name"] for item, _ in drawn] if infer == main else ())
        res = results[main]
        summary = dict(res.summary, checkpoint=best_path if os.path.exists(best_path) else None,
                       method=self.config.semi.method, dataset=self.config.data.dataset,
                       labeled_num=self.config.data.labeled_num, weights=self.weights_kind,
                       max_iters=self.run.max_iters, val_every=self.run.val_every, selected_on="val",
                       by_infer={m: {"dice": r.summary["dice"], "hd95": r.summary["hd95"]} for m, r in results.items()})
        self.run_dir.write_summary(summary)
        write_case_rows(os.path.join(self.run_dir.path, f"cases_{split}.csv"), res.rows)
        self.run_dir.log(format_summary(summary, self.class_names))
        for m, r in results.items():
            self.run_dir.log(f"{split} Dice, infer {m}: " + ", ".join(
                f"{c} {r.summary['dice'][c] * 100:.1f} %" for c in self.class_names)
                + f", mean {r.summary['dice']['mean'] * 100:.1f} %")
        picture = self.summary_picture(drawn, res.predictions, split, res.summary["dice"]["mean"])
        self.run_dir.log(f"summary picture: {picture}")
        self.run_dir.close()
        return 0

    def picture_items(self, volumes, max_volumes: int = 8) -> list[tuple[dict, int]]:
        """(volume item, slices to draw) of the summary picture: 2D, the largest slice of each of (up to) 4
        volumes; 3D, up to 5 slices of the volume, among the first ``max_volumes``, whose label has the most
        classes (the label only chooses what to draw; the prediction is the model's, image only)."""
        n = min(len(volumes), max_volumes)
        if self.run.script == "2d":
            return [(volumes[i], 1) for i in range(min(n, 4))]
        best = None                                     # (classes in the label, item): the first of the most
        for i in range(n):
            item = volumes[i]
            present = len(np.unique(np.asarray(item["label"])))
            if best is None or present > best[0]:
                best = (present, item)
        return [(best[1], 5)]

    def summary_picture(self, drawn: list[tuple[dict, int]], predictions: dict, split: str, mean_dice: float) -> str:
        """``vis/summary.png``: image | prediction (``predictions`` by volume name, from the final evaluation)
        | ground truth for the ``drawn`` slices (:meth:`picture_items`) beside the per-class validation Dice
        curve."""
        k, panels = len(self.class_names), []
        for item, num in drawn:
            image, label = np.asarray(item["image"], dtype=np.float32), np.asarray(item["label"])
            pred = predictions[item["name"]]
            for z in montage_slices(label, k, num):
                panels.append((f"{item['name']} z{z}", image[z], pred[z], label[z]))
        title = (f"{self.config.semi.method}, {self.run.max_iters} iterations, {split} mean Dice "
                 f"{mean_dice * 100:.1f}% (infer {self.config.infer.infer}, {self.weights_kind} weights)")
        return save_summary(os.path.join(self.run_dir.vis_dir, "summary.png"), panels, self.run_dir.read_metrics(),
                            self.class_names, title)
