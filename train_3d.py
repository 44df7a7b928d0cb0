"""Train SSS on volumes as slice sequences (SAM-2 video memory): BHSD, custom NIfTI folders, or the demo phantoms.

    python train_3d.py -dataset demo
    python train_3d.py -net sam2 -exp_name BHSD_SSS -sam_ckpt ./checkpoints/sam2_hiera_small.pt \
        -sam_config sam2_hiera_s -image_size 1024 -val_freq 1 -prompt bbox -prompt_freq 2 -dataset bhsd \
        -data_path ./data/bhsd

Flags: ``python train_3d.py -h`` (the common ones, at once), ``--help-all`` (every flag; they live in cfg.py),
docs/flags.md.
Multi-GPU: ``torchrun --nproc_per_node N train_3d.py ...``.
"""
import sys

from sam2_train.cli_help import print_short_help   # the standard library only: -h without importing torch

if __name__ == "__main__":
    if print_short_help(sys.argv[1:], "3d"):
        sys.exit(0)
    import run_training
    sys.exit(run_training.main(sys.argv[1:], "3d"))
