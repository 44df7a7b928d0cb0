"""The SAM-2 segmentation model and the SSS method: SAM-2 wrapper and tracker, SSS net, DFE, coarse head,
PCSW and prompts, semi-supervised targets and losses."""
