"""The base class of every params section (kept apart so section modules import no cycle)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Base for every params section: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
