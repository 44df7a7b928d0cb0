"""SAM-2 training core of SSS: model wrapper, DFE, coarse head, PCSW, losses, metrics, run utilities."""
