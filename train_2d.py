"""Train SSS on 2D slices: ACDC (SSL4MIS format), custom folders, or the built-in demo phantoms.

    python train_2d.py -dataset demo
    python train_2d.py -net sam2 -exp_name ACDC_SSS -vis 1 -sam_ckpt ./checkpoints/sam2_hiera_small.pt \
        -sam_config sam2_hiera_s -image_size 1024 -out_size 1024 -b 4 -val_freq 1 -dataset ACDC -data_path ./data/ACDC

Flags: ``python train_2d.py -h`` (the common ones, at once), ``--help-all`` (every flag; they live in cfg.py),
docs/flags.md.
Multi-GPU: ``torchrun --nproc_per_node N train_2d.py ...``.
"""
import sys

from sam2_train.cli_help import print_short_help   # the standard library only: -h without importing torch

if __name__ == "__main__":
    if print_short_help(sys.argv[1:], "2d"):
        sys.exit(0)
    import run_training
    sys.exit(run_training.main(sys.argv[1:], "2d"))
