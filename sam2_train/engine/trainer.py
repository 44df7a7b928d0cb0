"""The training engine shared by ``train_2d.py`` and ``train_3d.py``.

:meth:`Trainer.fit` is the table of contents of a run: set up, then per iteration a training step, logging,
validation every ``val_every`` iterations and checkpoints, then the final evaluation. A :class:`Task`
supplies what differs between slices (2D) and volumes (3D): the student's step module and the label-free
volume predictor.

Fair comparison, by construction: every ``-method`` runs the same ``max_iters`` iterations, validates at
the same iterations, is validated and reported from the same kind of weights (the EMA of the weights when
``ema > 0``, for every method) and with the same inference mode (``infer``); the checkpoint is selected on
the validation split only.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sam2_train.engine import runtime
from sam2_train.engine.checkpoint import (CheckpointError, check_config_compatible, check_resume_config, gather_rng_states,
                                          load_checkpoint, load_model_state, make_checkpoint, restore_training_state,
                                          resume_record, save_checkpoint, saved_world_size,
                                          world_size_change_message)
from sam2_train.engine.ema import ModelEMA
from sam2_train.engine.run_dir import RunDir, write_json_atomic
from sam2_train.engine.schedule import OptimConf, build_optimizer, build_scheduler, current_lrs
from sam2_train.engine.trusted_config import trusted_sam_config
from sam2_train.evaluation.loop import EvalResult, evaluate_volumes, format_summary, write_case_rows
from sam2_train.evaluation.vis import montage_slices, save_overlays, save_summary
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.sam_guide import SAMGuide, build_sam_guide
from sam2_train.model.semi import SemiConf
from sam2_train.model.sss_net import ModelConf, SSSNet, build_sss_net

INFER_MODES = ("coarse", "boxes", "pcsw")


class RunSetupError(ValueError):
    """Settings that cannot run on this data (for example a batch larger than a process's data shard)."""


@dataclass(frozen=True)
class RunConf:
    """How a run is executed: budget and cadence (iterations), batches, precision, weights, outputs."""
    script: str                 # "2d" (slices) or "3d" (volumes)
    max_iters: int              # training budget, the same for every method
    val_every: int              # validation cadence in iterations, the same for every method
    exp_name: str = "run"
    log_dir: str = "logs"
    seed: int = 0
    amp: str = "auto"           # auto (bf16 on CUDA) | bf16 | off
    batch_size: int = 4         # labeled slices (2D) / clips (3D) per step and process
    batch_size_u: int = 4       # unlabeled slices (2D, in slabs) / clips (3D) per step and process
    num_workers: int = 0
    ema: float = 0.99           # EMA decay of the weights that are validated and reported (0: raw student)
    infer: str = "pcsw"         # inference mode of validation and the reported numbers
    protocol: str = "ssl4mis"   # 2D resize rule of the evaluation (ssl4mis | unimatch)
    val_volumes: int = 0        # periodic validation on the first N volumes (0: all)
    log_freq: int = 20
    save_freq: int = 200
    max_bad_steps: int = 5
    resume: str | None = None
    resume_force: bool = False  # resume although flags that change the run differ (recorded in config.json)
    pretrain: str | None = None
    vis: bool = False
    compile: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run is built from (``cfg.to_config`` makes it from the command line)."""
    model: ModelConf
    semi: SemiConf
    pcsw: PCSWConfig
    optim: OptimConf
    run: RunConf


@dataclass(frozen=True)
class Task:
    """What a script plugs into the trainer.

    ``make_student(net, teacher, config, autocast)`` -> module whose ``forward(batch_l, batch_u, iteration)``
    returns ``{"loss", "loss_x", ...}`` (one DDP forward per step). ``predict(net, image, *, config, infer,
    device, autocast)`` -> label volume (D,H,W) from an image volume (D,H,W), never a label.
    ``unlabeled_batch(config)``: unlabeled dataset items per step and process. ``build_net(model_conf, device,
    sam_ckpt)``: the student network. ``infer_modes``: what ``predict`` can do (the final evaluation reports each).
    ``needs_guide(config)``: the run loads a frozen SAM-2 (:class:`SAMGuide`), handed to ``make_student`` and
    ``predict`` as ``guide``. ``pseudo_label_start(config)``: the iteration from which the unlabeled batches are
    one-time pseudo-labeled slices, None when they are the unlabeled views; ``pseudo_labels(run_path, unlabeled,
    label_volume, config, iteration=, is_main=, log=, wait=)`` then makes that dataset, labeling each volume once
    with ``label_volume(image) -> labels`` (``predict`` with ``infer="sam_refine"``) or reading the run's cache."""
    script: str
    make_student: Callable
    predict: Callable
    unlabeled_batch: Callable[[TrainConfig], int]
    build_net: Callable = build_sss_net
    infer_modes: tuple[str, ...] = INFER_MODES
    needs_guide: Callable[[TrainConfig], bool] | None = None
    pseudo_label_start: Callable[[TrainConfig], int | None] | None = None
    pseudo_labels: Callable | None = None


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only read and augment; threads would fight the training process


def make_loader(ds, batch_size: int, *, seed: int, num_workers: int, dist: runtime.DistInfo) -> DataLoader:
    """Training DataLoader: an endless resumable sampler (this process's shard, drop_last; 2D slabs of a batch
    from distinct volumes via ``ds.groups``) over ``EpochKeyed(ds)``, with persistent workers: the epoch
    advances inside the sampler, so workers prefetch across epoch boundaries. Use it through
    :class:`runtime.InfiniteLoader`."""
    if len(ds) // dist.world_size < batch_size:
        raise RunSetupError(f"{type(ds).__name__}: {len(ds)} items is fewer than one batch of {batch_size} per "
                            f"process; lower the batch size")
    sampler = runtime.ResumableSampler(len(ds), batch_size=batch_size, seed=seed, rank=dist.rank,
                                       world_size=dist.world_size, shuffle=True, drop_last=True,
                                       groups=getattr(ds, "groups", None), block=batch_size, endless=True)
    return DataLoader(runtime.EpochKeyed(ds), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                      persistent_workers=num_workers > 0, worker_init_fn=_worker_init)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def load_guide_state(guide: SAMGuide, state: dict, source: str, optimizer=None) -> None:
    """The fine-tuned SAM-2 guide (SAM-Match, ``-guide_train 1``) saved in checkpoint ``state`` (and its optimiser
    state when ``optimizer`` is given); CheckpointError when the checkpoint has none."""
    if not state.get("guide"):
        raise CheckpointError(f"{source} holds no fine-tuned SAM-2 guide (-guide_train 1 saves it with the run)")
    load_model_state(guide.sam, state["guide"]["model"], strict=True, what=f"the SAM-2 guide of {source}")
    if optimizer is not None:
        optimizer.load_state_dict(state["guide"]["optimizer"])


def evaluate_model(task: Task, net: SSSNet, volumes, class_names, config: TrainConfig, *, infer: str, device,
                   autocast, split: str, max_volumes: int = 0, vis_dir: str | None = None,
                   save_pred: Callable | None = None, keep: Collection[str] = (),
                   guide: SAMGuide | None = None) -> EvalResult:
    """Label-free evaluation of ``net`` on whole volumes in inference mode ``infer``; the predictions of the
    volumes named in ``keep`` (all with ``vis_dir``) are returned in ``EvalResult.predictions``. ``guide``: the
    frozen SAM-2 of a lightweight student (``-infer sam_refine``)."""
    net.eval()
    protocol = config.run.protocol if task.script == "2d" else "volume"
    extra = {"guide": guide} if guide is not None else {}
    res = evaluate_volumes(volumes, lambda image, spacing: task.predict(net, image, config=config, infer=infer,
                                                                        device=device, autocast=autocast, **extra),
                           class_names, protocol=protocol, split=split, max_volumes=max_volumes,
                           save_pred=save_pred, keep_predictions=True if vis_dir is not None else keep)
    res.summary["infer"] = infer
    if vis_dir is not None:  # overlays of the volumes just evaluated (labels drawn beside the prediction)
        for i in range(len(res.predictions)):
            save_overlays(vis_dir, volumes[i], res.predictions[volumes[i]["name"]])
    return res


class Trainer:
    """One training run. ``splits`` has ``labeled``, ``unlabeled`` (or None), ``val``, ``test`` (or None)
    datasets, ``class_names``, ``case_names`` and ``summary()``; ``record`` is the flat config written to
    ``config.json`` and every checkpoint."""

    def __init__(self, config: TrainConfig, task: Task, splits, dist: runtime.DistInfo, record: dict):
        self.config, self.run, self.task, self.splits, self.dist, self.record = config, config.run, task, splits, dist, record
        self.device = dist.device
        self.class_names = list(splits.class_names)
        self.semi_supervised = config.semi.semi_supervised

    def autocast(self):
        return runtime.autocast(self.device, self.run.amp)

    # ------------------------------------------------------------------ table of contents
    def fit(self) -> int:
        self.setup()
        for it in self.progress:
            out = self.train_step(it)
            self.log_step(it + 1, out)
            self.maybe_validate(it + 1)
            self.maybe_save(it + 1)
        return self.final_evaluation()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        run, dist = self.run, self.dist
        runtime.seed_everything(run.seed, dist.rank)
        runtime.enable_tf32()
        resume = load_checkpoint(run.resume) if run.resume else None
        if resume is not None:
            resume_changes = check_resume_config(resume["config"], self.record, force=run.resume_force,
                                                 source=run.resume)
        self.net = self.task.build_net(self.config.model, device=self.device,
                                       sam_ckpt="none" if resume is not None else None)
        m, semi = self.config.model, self.config.semi
        # the SAM-2 guide comes from -sam_ckpt; only SAM-Match's fine-tuned one (-guide_train 1) is saved with the run
        self.guide = (build_sam_guide(m.sam_config, m.sam_ckpt, m.guide_size, self.device, self.autocast,
                                      trainable=semi.guide_train)
                      if self.task.needs_guide is not None and self.task.needs_guide(self.config) else None)
        self.guide_optimizer = (torch.optim.SGD(self.guide.sam.parameters(), lr=semi.guide_lr, momentum=0.9,
                                                weight_decay=1e-4, foreach=True)
                                if self.guide is not None and self.guide.trainable else None)
        if run.pretrain and resume is None:
            state = load_checkpoint(run.pretrain)
            saved = dict(state["config"], sam_config=trusted_sam_config(state["config"].get("sam_config"), run.pretrain))
            check_config_compatible(saved, self.record, source=run.pretrain)
            load_model_state(self.net, state["model"], strict=True)

        self.loader_l = make_loader(self.splits.labeled, run.batch_size, seed=run.seed,
                                    num_workers=run.num_workers, dist=dist)
        self.pseudo_start = (self.task.pseudo_label_start(self.config) if self.task.pseudo_label_start is not None
                             else None)
        self.loader_u = (make_loader(self.splits.unlabeled, self.task.unlabeled_batch(self.config), seed=run.seed,
                                     num_workers=run.num_workers, dist=dist)
                         if self.semi_supervised and self.pseudo_start is None else None)
        self.optimizer = build_optimizer(self.net, self.config.optim)
        self.scheduler = build_scheduler(self.optimizer, self.config.optim, run.max_iters)
        self.ema = ModelEMA(self.net, run.ema) if run.ema > 0 else None   # every method: EMA weights are evaluated
        self.guard = runtime.NonFiniteGuard(run.max_bad_steps)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.best = {"metric": "dice", "value": -1.0, "iteration": 0}
        start = 0
        if resume is not None:
            info = restore_training_state(resume, self.net, optimizer=self.optimizer, scheduler=self.scheduler,
                                          ema=self.ema)
            start, self.best = info["iteration"], info["best"] or self.best
            self.guard.load_state_dict(resume.get("guard", {}))
            if self.guide_optimizer is not None:
                load_guide_state(self.guide, resume, run.resume, self.guide_optimizer)
            self.run_dir = RunDir.open(run.resume, is_main=dist.is_main, resume_iteration=start)
            self.run_dir.record_resume(resume_record(resume, run.resume, resume_changes, dist.world_size))
        else:
            self.run_dir = RunDir.create(run.log_dir, run.exp_name, self.record, is_main=dist.is_main)
            if dist.is_main:
                write_json_atomic(os.path.join(self.run_dir.path, "splits.json"), self.splits.case_names)
        teacher = self.ema.module if (self.ema is not None and self.semi_supervised) else self.net
        if run.compile:
            runtime.compile_image_encoders(self.net, *([self.ema.module] if self.ema is not None else []))
        # find_unused_parameters: a step uses only part of SAM-2 (2D never runs the memory modules; prompts and
        # the unlabeled branch vary per step), and DDP must not wait for gradients that never come.
        extra = {"guide": self.guide} if self.guide is not None else {}
        student = self.task.make_student(self.net, teacher, self.config, self.autocast, **extra).to(self.device)
        self.student = runtime.wrap_ddp(student, dist, find_unused_parameters=True)
        self.batches_l = runtime.InfiniteLoader(self.loader_l, start_iter=start)
        self.batches_u = runtime.InfiniteLoader(self.loader_u, start_iter=start) if self.loader_u else None
        self.progress = tqdm(range(start, run.max_iters), initial=start, total=run.max_iters, desc="train",
                             disable=not dist.is_main, dynamic_ncols=True)
        self._sums, self._n, self._t0 = {}, 0, time.time()
        self._pcsw_sums, self._pcsw_n = {}, 0    # PCSW rates over the current validation interval

        log = self.run_dir.log
        log(self.splits.summary())
        log(f"run directory: {self.run_dir.path}" if dist.is_main else "")
        if resume is not None:
            log(f"resumed from {run.resume} at iteration {start}/{run.max_iters}")
            if resume_changes:
                log("warning: -resume_force 1: continuing with changed flags " + ", ".join(
                    f"-{k} {old!r} -> {new!r}" for k, (old, new) in resume_changes.items()))
            ws_change = world_size_change_message(saved_world_size(resume), dist.world_size, batch=run.batch_size,
                                                  source=run.resume)
            if ws_change:
                log(f"warning: {ws_change}")
        student_name = m.sam_config if m.student == "sam2" else f"{m.student} student" + (
            f", frozen {m.sam_config} guide" if self.guide is not None else "")
        log(f"{self.config.semi.method} | {student_name} @ {m.image_size}px | DFE {int(m.dfe)} "
            f"PCSW {int(self.config.semi.use_pcsw)} | {run.max_iters} iterations, validation every {run.val_every} "
            f"({self.weights_kind} weights, infer {run.infer}) on {self.device}, world size {dist.world_size}")

    @property
    def weights_kind(self) -> str:
        return "ema" if self.ema is not None else "student"

    @property
    def eval_net(self) -> SSSNet:
        return self.ema.module if self.ema is not None else self.net

    # ------------------------------------------------------------------ one iteration
    def train_step(self, it: int) -> dict:
        self.student.train()
        batch_l = _to(next(self.batches_l), self.device)
        out = self.student(batch_l, self.unlabeled_batch(it), it)
        self.optimizer.zero_grad(set_to_none=True)
        if self.guide_optimizer is not None:
            self.guide_optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        clip = self.config.optim.clip_grad   # the norm is computed without clipping too: the guard reads it
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip if clip > 0 else float("inf"))
        # one host sync per step: skip the update when the loss or any gradient is not finite; the same sync
        # reads the finiteness of the weights the previous update produced
        if self.guard.check(out["loss"].detach().float() + grad_norm, it + 1):
            self.optimizer.step()
            if self.guide_optimizer is not None:   # outside DDP: its gradients are averaged over the ranks here
                runtime.average_gradients(self.guide.sam.parameters())
                self.guide_optimizer.step()
            self.guard.watch_weights(self.trainable, it + 1)
            if self.ema is not None:
                self.ema.update(self.net)
        self.scheduler.step()
        return out

    def unlabeled_batch(self, it: int) -> dict | None:
        """The unlabeled batch of iteration ``it`` (None without one). With one-time pseudo-labels
        (``Task.pseudo_label_start``) there is none before the start; at the start (or on resuming after it)
        the unlabeled slices are labeled once, or read back from ``<run>/pseudo``, and batches of them follow."""
        if self.pseudo_start is not None and it >= self.pseudo_start and self.batches_u is None:
            label = lambda image: self.task.predict(self.eval_net, image, config=self.config, infer="sam_refine",  # noqa: E731
                                                    device=self.device, autocast=self.autocast, guide=self.guide)
            ds = self.task.pseudo_labels(self.run_dir.path, self.splits.unlabeled, label, self.config, iteration=it,
                                         is_main=self.dist.is_main, log=self.run_dir.log, wait=runtime.barrier)
            loader = make_loader(ds, self.task.unlabeled_batch(self.config), seed=self.run.seed,
                                 num_workers=self.run.num_workers, dist=self.dist)
            self.batches_u = runtime.InfiniteLoader(loader, start_iter=it - self.pseudo_start)
        return _to(next(self.batches_u), self.device) if self.batches_u is not None else None

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
            res = evaluate_model(self.task, self.eval_net, self.splits.val, self.class_names, self.config,
                                 infer=self.run.infer, device=self.device, autocast=self.autocast, split="val",
                                 max_volumes=self.run.val_volumes, vis_dir=vis_dir, guide=self.guide)
            self.record_validation(done, res)
            dice = res.summary["dice"]["mean"]
            improved = bool(np.isfinite(dice) and dice > self.best["value"])
            if improved:
                self.best = {"metric": "dice", "value": float(dice), "iteration": done}
        self.save(("last", "best") if improved else ("last",), done)
        runtime.barrier()

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

    def record_validation(self, done: int, res: EvalResult) -> None:
        s, names = res.summary, (*self.class_names, "mean")
        self.run_dir.append_metrics_row({"iteration": done, **{f"{m}_{c}": s[m][c] for m in ("dice", "jaccard", "hd95", "asd")
                                                               for c in names}, **self.pcsw_interval_rates()})
        self.run_dir.log_scalars(done, {f"{m}/{c}": s[m][c] for m in ("dice", "hd95") for c in names}, prefix="val/")
        self.run_dir.log(f"[iter {done}] val mean Dice {s['dice']['mean'] * 100:.2f} "
                         + " ".join(f"{c} {s['dice'][c] * 100:.1f}" for c in self.class_names))

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
        state = make_checkpoint(self.net, self.record, optimizer=self.optimizer, scheduler=self.scheduler,
                                ema=self.ema, rng=rng, iteration=iteration, epoch=iteration // self.run.val_every,
                                best=self.best, guard=self.guard.state_dict(), world_size=self.dist.world_size,
                                **({"guide": {"model": self.guide.sam.state_dict(),
                                              "optimizer": self.guide_optimizer.state_dict()}}
                                   if self.guide_optimizer is not None else {}))
        for name in names:
            save_checkpoint(self.run_dir.checkpoint_path(name), state)

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
            if self.guide_optimizer is not None:
                load_guide_state(self.guide, state, best_path)
        volumes, split = (self.splits.test, "test") if self.splits.test is not None else (self.splits.val, "val")
        if self.splits.test is None:
            self.run_dir.log(f"no test split ({self.splits.test_missing}); final numbers are on the validation split")
        drawn = self.picture_items(volumes)
        results = {}
        modes = [m for m in self.task.infer_modes if m != self.run.infer and (m != "sam_refine" or self.guide is not None)]
        for infer in (self.run.infer, *modes):
            results[infer] = evaluate_model(self.task, net, volumes, self.class_names, self.config, infer=infer,
                                            device=self.device, autocast=self.autocast, split=split, guide=self.guide,
                                            keep=[item["name"] for item, _ in drawn] if infer == self.run.infer else ())
        res = results[self.run.infer]
        summary = dict(res.summary, checkpoint=best_path if os.path.exists(best_path) else None,
                       method=self.config.semi.method, dataset=self.record.get("dataset"),
                       labeled_num=self.record.get("labeled_num"), weights=self.weights_kind,
                       max_iters=self.run.max_iters, val_every=self.run.val_every, selected_on="val",
                       by_infer={m: {"dice": r.summary["dice"], "hd95": r.summary["hd95"]} for m, r in results.items()})
        self.run_dir.write_summary(summary)
        write_case_rows(os.path.join(self.run_dir.path, f"cases_{split}.csv"), res.rows)
        self.run_dir.log(format_summary(summary, self.class_names))
        for m, r in results.items():
            self.run_dir.log(f"{split} Dice, infer {m}: " + ", ".join(
                f"{c} {r.summary['dice'][c] * 100:.1f}" for c in self.class_names)
                + f", mean {r.summary['dice']['mean'] * 100:.1f}")
        picture = self.summary_picture(drawn, res.predictions, split, res.summary["dice"]["mean"])
        self.run_dir.log(f"summary picture: {picture}")
        self.run_dir.close()
        return 0

    def picture_items(self, volumes, max_volumes: int = 8) -> list[tuple[dict, int]]:
        """(volume item, slices to draw) of the summary picture: 2D, the largest slice of each of (up to) 4
        volumes; 3D, up to 5 slices of the volume, among the first ``max_volumes``, whose label has the most
        classes (the label only chooses what to draw; the prediction is the model's, image only)."""
        n = min(len(volumes), max_volumes)
        if self.task.script == "2d":
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
                 f"{mean_dice * 100:.1f}% (infer {self.run.infer}, {self.weights_kind} weights)")
        return save_summary(os.path.join(self.run_dir.vis_dir, "summary.png"), panels, self.run_dir.read_metrics(),
                            self.class_names, title)
