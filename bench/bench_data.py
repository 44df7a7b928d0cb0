"""Data-loading throughput: 2D slices/s (labeled + unlabeled slabs) and 3D clips/s.

    python bench/bench_data.py                       # demo data (generated under data/ if missing)
    python bench/bench_data.py --acdc /path/ACDC --bhsd /path/BHSD --image_size 1024 --workers 8

Prints per-item time in the main process (no workers) and items/s through a DataLoader with the
default number of workers (min(8, cpus)), so it can be compared with a GPU step time: loading keeps up
when items/s x step time >= batch size.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch.utils.data import DataLoader  # noqa: E402

from dataset import DataConf, build_datasets  # noqa: E402


def _ns(**kw):
    base = dict(dataset="acdc", data_path=None, labeled_num=None, labeled_ratio=None, image_size=128,
                video_length=8, slab_len=4, hu_window=(0.0, 80.0), class_names=None, seed=0, method="sss",
                fg_oversample=0.0)
    base.update(kw)
    return DataConf(**base)


def per_item(ds, n):
    n = min(n, len(ds))
    t = time.perf_counter()
    for i in range(n):
        ds[i]
    return (time.perf_counter() - t) / n


def loader_rate(ds, batch, workers, n_batches):
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False,
                    persistent_workers=False, pin_memory=False)
    it = iter(dl)
    next(it)                              # worker start-up is not throughput
    t, items = time.perf_counter(), 0
    for _ in range(n_batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(dl)
            b = next(it)
        items += len(b["name"])
    return items / (time.perf_counter() - t)


def report(tag, ds, unit, batch, workers, n_items, n_batches):
    t1 = per_item(ds, n_items)
    rate = loader_rate(ds, batch, workers, n_batches)
    per = getattr(ds, "slab_len", None) or getattr(ds, "video_length", None) or 1
    print(f"{tag:<28} {len(ds):>6} items | {t1 * 1000:8.1f} ms/item (1 process) | "
          f"{rate:8.1f} {unit}/s with {workers} workers | {rate * per:8.1f} slices/s")
    return rate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--acdc", default=None, help="an ACDC root (SSL4MIS layout); default: demo data")
    p.add_argument("--bhsd", default=None, help="a BHSD root; default: demo data")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--items", type=int, default=16, help="items timed in the main process")
    p.add_argument("--batches", type=int, default=10, help="batches timed through the DataLoader")
    a = p.parse_args(argv)
    print(f"image_size {a.image_size}, workers {a.workers}, batch {a.batch} (2D) / 1 (3D), cpus {os.cpu_count()}")
    if a.acdc:
        s2 = build_datasets(_ns(dataset="acdc", data_path=a.acdc, labeled_num=3, image_size=a.image_size), "2d")
    else:
        s2 = build_datasets(_ns(dataset="demo", data_path=os.path.join("data", "demo_acdc"), labeled_num=2,
                                image_size=a.image_size), "2d")
    if a.bhsd:
        s3 = build_datasets(_ns(dataset="bhsd", data_path=a.bhsd, labeled_num=None, image_size=a.image_size), "3d")
    else:
        s3 = build_datasets(_ns(dataset="demo", data_path=os.path.join("data", "demo_bhsd"), labeled_num=2,
                                image_size=a.image_size), "3d")
    print(s2.summary())
    print(s3.summary())
    report("2D labeled slices", s2.labeled, "slices", a.batch, a.workers, a.items, a.batches)
    report("2D unlabeled slabs (x3 views)", s2.unlabeled, "slabs", a.batch, a.workers, a.items, a.batches)
    report("3D labeled clips", s3.labeled, "clips", 1, a.workers, a.items // 2, a.batches)
    report("3D unlabeled clips (x3)", s3.unlabeled, "clips", 1, a.workers, a.items // 2, a.batches)
    t = time.perf_counter()
    n = min(4, len(s2.val))
    for i in range(n):
        s2.val[i]
    print(f"{'2D val volumes':<28} {len(s2.val):>6} items | {(time.perf_counter() - t) / n * 1000:8.1f} ms/volume")
    t = time.perf_counter()
    n = min(4, len(s3.val))
    for i in range(n):
        s3.val[i]
    print(f"{'3D val volumes':<28} {len(s3.val):>6} items | {(time.perf_counter() - t) / n * 1000:8.1f} ms/volume")
    print("A training step that takes T seconds needs (b + b_u) items per T: loading keeps up when the "
          "items/s above exceed that rate.")


if __name__ == "__main__":
    main()
