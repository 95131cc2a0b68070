"""Augmentation phase: synthetic slice generation, quality and memorization checks, segmentation."""
