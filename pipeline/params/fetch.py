"""Params section of ``gvae fetch-tcia``: downloading a TCIA collection and its labels.

Registered in ``pipeline.params.loader.SECTIONS`` as ``fetch``. Every field can be overridden by the
stage's command line flags.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from common.frozen import Frozen

# One folder name: the collection and the labels folder become folders under --out.
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHECKSUM = re.compile(r"^(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$")


def check_folder_name(value: str, what: str) -> str:
    """Return ``value`` if it is one plain folder name; raise ``ValueError`` naming it if not."""
    if not _FOLDER.match(value) or value in {".", ".."}:
        raise ValueError(f"{what} {value!r} must be one folder name (letters, digits, . _ -)")
    return value


class FetchParams(Frozen):
    """TCIA's public NBIA REST API (v1) and the labels archive of Pancreas-CT."""

    base_url: str = "https://services.cancerimagingarchive.net/nbia-api/services/v1/"
    collection: str = "Pancreas-CT"
    # TCIA has moved this archive several times (wiki attachment, then wp-content/uploads);
    # null or --no-labels fetches images only (other collections have no such archive).
    labels_url: str | None = (
        "https://www.cancerimagingarchive.net/wp-content/uploads/"
        "TCIA_pancreas_labels-02-05-2017-1.zip"
    )
    # "md5:<hex>" or "sha256:<hex>" of the labels archive, or null to skip the check. The
    # default is the SHA-256 that torch-em's Pancreas-CT loader checks for this URL.
    labels_checksum: str | None = (
        "sha256:cf8a553c37c80e3840ce7392987b308f7a98cd5f50019511b2ac0f3a54b0934b"
    )
    # The folder under --out that the labelNNNN.nii.gz files are extracted to.
    labels_folder: str = "TCIA_pancreas_labels-02-05-2017"
    # Attempts after the first for a transient failure (HTTP 429/5xx, a refused or broken
    # connection, a timeout, a body that breaks off), with exponential backoff from backoff_s
    # seconds (at most 60 s between two attempts).
    retries: int = Field(5, ge=0, le=20)
    backoff_s: float = Field(2.0, ge=0)
    # Seconds to connect and between two reads of a response (not the whole download).
    timeout_s: float = Field(120.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url {value!r} must start with http:// or https://")
        return value if value.endswith("/") else value + "/"

    @field_validator("labels_url")
    @classmethod
    def _labels_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"labels_url {value!r} must start with http:// or https://")
        return value

    @field_validator("labels_checksum")
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        if value is not None and not _CHECKSUM.match(value.lower()):
            raise ValueError(
                f"labels_checksum {value!r} must be 'md5:<32 hex digits>' or "
                "'sha256:<64 hex digits>'"
            )
        return None if value is None else value.lower()

    @field_validator("collection")
    @classmethod
    def _collection(cls, value: str) -> str:
        return check_folder_name(value, "collection")

    @field_validator("labels_folder")
    @classmethod
    def _labels_folder(cls, value: str) -> str:
        return check_folder_name(value, "labels_folder")
