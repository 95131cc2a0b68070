"""Cohort phase: raw scans and slice collections -> labelled 2D slices (readers and their cores)."""
