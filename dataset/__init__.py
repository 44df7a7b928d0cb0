"""Datasets: ACDC, BHSD, custom folders, demo phantoms, augmentation."""
