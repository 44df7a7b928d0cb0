"""The training loop shared by ``train_2d.py`` and ``train_3d.py``.

A :class:`Pipeline` supplies what differs between slices and volumes (the student's step module, the
step function and the label-free volume predictor); everything else (devices, DDP, data loaders, EMA,
optimiser and schedule, non-finite guard, validation, atomic checkpoints, exact resume, logging) is here.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import DatasetError, build_datasets, collate_volumes
from sam2_train.engine import runtime
from sam2_train.model.build import CheckpointMismatchError
from sam2_train.engine.checkpoint import (CheckpointError, ConfigMismatchError, check_config_compatible, gather_rng_states,
                                   load_checkpoint, load_model_state, make_checkpoint, restore_training_state,
                                   save_checkpoint)
from sam2_train.engine.ema import ModelEMA
from sam2_train.evaluation.loop import evaluate_volumes, format_summary, write_case_rows
from sam2_train.engine.run_dir import RunDir, console
from sam2_train.engine.schedule import build_optimizer, build_scheduler, current_lrs
from sam2_train.model.sss_net import SSSNet, build_sss_net
from sam2_train.evaluation.vis import save_overlays

USER_ERRORS = (DatasetError, FileNotFoundError, CheckpointError, CheckpointMismatchError, ConfigMismatchError)


@dataclass
class Pipeline:
    """What the 2D and 3D scripts plug into the loop."""
    script: str                                                        # "2d" or "3d"
    make_student: Callable[[SSSNet, object], torch.nn.Module]          # (net, args) -> step module
    step: Callable                                                     # (student, teacher, bl, bu, args, it, autocast) -> dict
    predict: Callable                                                  # (net, image, spacing, args, device, autocast) -> labels
    unlabeled_batch: Callable[[object], int]                           # args -> unlabeled items per step


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only read and augment; threads would fight the training process


def _loader(ds, batch_size: int, args, dist: runtime.DistInfo, shuffle: bool = True) -> DataLoader:
    """Training DataLoader: an endless resumable sampler over ``EpochKeyed(ds)``, persistent workers (the
    epoch advances inside the sampler, so workers prefetch across epoch boundaries); use it through
    :class:`runtime.InfiniteLoader`."""
    if len(ds) // dist.world_size < batch_size:
        raise DatasetError(f"{type(ds).__name__}: {len(ds)} items is fewer than one batch of {batch_size} "
                           f"per process; lower the batch size")
    sampler = runtime.ResumableSampler(len(ds), batch_size=batch_size, seed=args.seed, rank=dist.rank,
                                       world_size=dist.world_size, shuffle=shuffle, drop_last=True, endless=True)
    return DataLoader(runtime.EpochKeyed(ds), batch_size=batch_size, sampler=sampler, num_workers=args.num_workers,
                      drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                      persistent_workers=args.num_workers > 0, worker_init_fn=_worker_init)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def model_predictor(pipeline: Pipeline, net: SSSNet, args, device, autocast):
    """A label-free ``predict(image, spacing)`` for :func:`evaluate_volumes`."""
    return lambda image, spacing: pipeline.predict(net, image, spacing, args, device, autocast)


def validate(pipeline: Pipeline, net: SSSNet, volumes, class_names, args, device, autocast, *, split: str,
             vis_dir: str | None = None, save_pred=None, max_volumes: int = 0):
    """Evaluate ``net`` on whole volumes; returns an :class:`EvalResult`."""
    net.eval()
    res = evaluate_volumes(volumes, model_predictor(pipeline, net, args, device, autocast), class_names,
                           protocol=args.protocol if pipeline.script == "2d" else "volume", split=split,
                           max_volumes=max_volumes, save_pred=save_pred, keep_predictions=vis_dir is not None)
    if vis_dir is not None:  # overlays of the volumes just evaluated (labels drawn beside the prediction)
        for i in range(len(res.predictions)):
            item = volumes[i]
            save_overlays(vis_dir, item, res.predictions[item["name"]])
    return res


def run(argv, pipeline: Pipeline, parse) -> int:
    """Entry point body of the training scripts. Returns the process exit status."""
    args = parse(argv, script=pipeline.script)
    try:
        return _train(args, pipeline)
    except USER_ERRORS as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runtime.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        runtime.cleanup()


def _train(args, pipeline: Pipeline) -> int:
    dist = runtime.init_distributed(args)
    device = dist.device
    runtime.seed_everything(args.seed, dist.rank)
    runtime.enable_tf32()
    autocast = lambda: runtime.autocast(device, args.amp)  # noqa: E731

    splits = build_datasets(args, pipeline.script)
    args.class_names = list(splits.class_names)
    args.num_classes = splits.num_classes
    if args.method != "supervised" and splits.unlabeled is None:
        raise DatasetError(splits.unlabeled_missing or "no unlabeled data")

    resume_state = None
    if args.resume:
        resume_state = load_checkpoint(args.resume)
        check_config_compatible(resume_state["config"], args, source=args.resume)

    net = build_sss_net(args, splits.num_classes, device=device,
                        sam_ckpt="none" if resume_state is not None else None)
    if args.pretrain and resume_state is None:
        state = load_checkpoint(args.pretrain)
        check_config_compatible(state["config"], args, source=args.pretrain)
        load_model_state(net, state["model"], strict=True)

    semi = args.method != "supervised"
    dl_l = _loader(splits.labeled, args.b, args, dist)
    dl_u = _loader(splits.unlabeled, pipeline.unlabeled_batch(args), args, dist) if semi else None
    iters_per_epoch = len(dl_u) if semi else len(dl_l)
    total = args.max_iters if args.max_iters else args.epochs * iters_per_epoch
    val_every = max(1, args.val_freq * iters_per_epoch)

    optimizer = build_optimizer(net, args)
    scheduler = build_scheduler(optimizer, args, total)
    ema = ModelEMA(net, args.ema) if semi and args.ema > 0 else None
    guard = runtime.NonFiniteGuard(args.max_bad_steps)
    start, best = 0, {"metric": "dice", "value": -1.0, "iteration": 0}
    if resume_state is not None:
        info = restore_training_state(resume_state, net, optimizer=optimizer, scheduler=scheduler, ema=ema)
        start, best = info["iteration"], info["best"] or best
        guard.load_state_dict(resume_state.get("guard", {}))
        run_dir = RunDir.open(args.resume, is_main=dist.is_main, resume_iteration=start)
    else:
        run_dir = RunDir.create(args.log_dir, args.exp_name, args, is_main=dist.is_main)
    teacher = ema.module if ema is not None else net
    # find_unused_parameters: a step uses only part of SAM-2 (2D never runs the memory modules; prompts and
    # the unlabeled branch vary per step), and DDP must not wait for gradients that never come.
    student = runtime.wrap_ddp(pipeline.make_student(net, args).to(device), dist, find_unused_parameters=True)

    log = run_dir.log
    log(splits.summary())
    log(f"run directory: {run_dir.path}" if dist.is_main else "")
    if resume_state is not None:
        log(f"resumed from {args.resume} at iteration {start}/{total}")
    log(f"{args.method} | {args.sam_config} @ {args.image_size}px | DFE {int(args.dfe)} PCSW {int(args.pcsw)} | "
        f"{total} iterations ({iters_per_epoch}/epoch) on {device}, world size {dist.world_size}")

    it_l = runtime.InfiniteLoader(dl_l, start_iter=start)
    it_u = runtime.InfiniteLoader(dl_u, start_iter=start) if semi else None

    def checkpoint(name: str, iteration: int):
        rng = gather_rng_states()
        if dist.is_main:
            state = make_checkpoint(net, args, optimizer=optimizer, scheduler=scheduler, ema=ema, rng=rng,
                                    iteration=iteration, epoch=iteration // iters_per_epoch, best=best,
                                    guard=guard.state_dict())
            save_checkpoint(run_dir.checkpoint_path(name), state)

    eval_net = lambda: teacher if ema is not None else net  # noqa: E731  (EMA teacher when there is one)
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", disable=not dist.is_main,
               dynamic_ncols=True)
    t0, sums, n_sum = time.time(), {}, 0
    for it in bar:
        student.train()
        batch_l = _to(next(it_l), device)
        batch_u = _to(next(it_u), device) if semi else None
        out = pipeline.step(student, teacher, batch_l, batch_u, args, it, autocast)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        # one host sync per step: skip the update when the loss or any gradient is not finite
        if guard.check(out["loss"].detach().float() + grad_norm, it):
            optimizer.step()
            if ema is not None:
                ema.update(net)
        scheduler.step()
        for key, v in out.items():   # accumulate on device; fetched once per log interval
            sums[key] = sums.get(key, 0.0) + v.detach().float()
        n_sum += 1
        done = it + 1
        if done % args.log_freq == 0 or done == total:
            keys = list(sums)
            means = {k: v / n_sum for k, v in zip(keys, torch.stack([sums[k] for k in keys]).cpu().tolist())}
            means.update({f"lr/{k}": v for k, v in current_lrs(optimizer).items()})
            means["it_per_s"] = n_sum / max(1e-9, time.time() - t0)
            run_dir.log_scalars(done, means, prefix="train/")
            bar.set_postfix(loss=f"{means['loss']:.3f}")
            t0, sums, n_sum = time.time(), {}, 0
        if args.save_freq and done % args.save_freq == 0 and done % val_every != 0 and done != total:
            checkpoint("last", done)
        if done % val_every == 0 or done == total:
            if dist.is_main:
                vis_dir = os.path.join(run_dir.vis_dir, f"iter{done:06d}") if args.vis else None
                res = validate(pipeline, eval_net(), splits.val, args.class_names, args, device, autocast,
                               split="val", max_volumes=args.val_volumes, vis_dir=vis_dir)
                dice = res.summary["dice"]["mean"]
                run_dir.append_metrics_row({"iteration": done, "epoch": done / iters_per_epoch,
                                            **{f"{m}_{c}": res.summary[m][c] for m in ("dice", "jaccard", "hd95", "asd")
                                               for c in (*args.class_names, "mean")}})
                run_dir.log_scalars(done, {f"{m}/{c}": res.summary[m][c] for m in ("dice", "hd95")
                                           for c in (*args.class_names, "mean")}, prefix="val/")
                log(f"[iter {done}] val mean Dice {dice * 100:.2f} "
                    + " ".join(f"{c} {res.summary['dice'][c] * 100:.1f}" for c in args.class_names))
                if np.isfinite(dice) and dice > best["value"]:
                    best = {"metric": "dice", "value": float(dice), "iteration": done}
                    checkpoint("best", done)
            else:
                gather_rng_states()  # collective: keep ranks in step with the main rank's checkpoint()
            checkpoint("last", done)
            runtime.barrier()

    return _final_evaluation(args, pipeline, net, ema, splits, run_dir, device, autocast, dist)


def _final_evaluation(args, pipeline, net, ema, splits, run_dir, device, autocast, dist) -> int:
    """Evaluate the best checkpoint on the test split (val if there is none); write summary.json."""
    if not dist.is_main:
        return 0
    best_path = run_dir.checkpoint_path("best")
    if os.path.exists(best_path):
        state = load_checkpoint(best_path)
        target = ema.module if ema is not None else net
        load_model_state(target, state["ema"]["module"] if ema is not None else state["model"], strict=True)
        net_eval = target
    else:
        net_eval = ema.module if ema is not None else net
    volumes, split = (splits.test, "test") if splits.test is not None else (splits.val, "val")
    if splits.test is None:
        run_dir.log(f"no test split ({splits.test_missing}); final numbers are on the validation split")
    res = validate(pipeline, net_eval, volumes, args.class_names, args, device, autocast, split=split)
    summary = dict(res.summary)
    summary.update(checkpoint=best_path if os.path.exists(best_path) else None, method=args.method,
                   labeled_num=args.labeled_num, dataset=args.dataset)
    run_dir.write_summary(summary)
    write_case_rows(os.path.join(run_dir.path, f"cases_{split}.csv"), res.rows)
    run_dir.log(format_summary(summary, args.class_names))
    run_dir.log(f"per-class Dice on {split}: " + ", ".join(
        f"{c} {summary['dice'][c] * 100:.1f}" for c in args.class_names) + f", mean {summary['dice']['mean'] * 100:.1f}")
    run_dir.close()
    return 0
