"""Prefect flows and deployments: they call DVC and the stage code, never re-implement stages.

- ``dag.dvc_dag``: the DVC DAG stage by stage (``dvc repro --single-item``), one task each.
- ``export.clinician_export``: one clinician request, N synthetic slices of a model to a folder
  and optionally a PACS, through ``gvae export``'s own code.
- ``cohort.cohort_dask``: ``gvae ingest`` + ``gvae slices`` with one task per case on a Dask
  cluster (``prefect-dask``; params ``flows.dask``), same per-case code, same outputs.
- ``repo_lock``: the file lock that runs one ``dvc repro`` of the flows per repo at a time.
- ``notify``: the flows' ``on_failure`` hook, a JSON notice to the webhook of params
  ``flows.notify``.
- ``deploy``: the scheduled nightly deployment and the on-request export deployment, run by
  ``gvae serve`` or, from the generated ``prefect.yaml``, by a Prefect worker on a work pool.
"""

from __future__ import annotations

import sys

# The DVC of this interpreter (`python -m dvc`), not whichever `dvc` comes first on PATH.
DVC = (sys.executable, "-m", "dvc")
