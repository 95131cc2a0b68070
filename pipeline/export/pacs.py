"""Delivery of an exported set to a PACS with C-STORE (pynetdicom), and its record.

The receipt lists every instance; each instance's ``pacs`` entry maps a destination
(``CALLED_AET@host:port``) to the outcome of the last attempt to store it there:

* ``stored``      the PACS answered the C-STORE with Success or a Warning (stored anyway);
* ``rejected``    the PACS answered with a Failure status (code and meaning recorded);
* ``unconfirmed`` the request went out but no answer came (aborted or timed out): the PACS may
                  or may not hold it, so it counts as missing and is sent again;
* ``not sent``    it never went out (no connection, association refused, no accepted
                  presentation context, association lost before its turn).

Only ``stored`` counts as arrived; a retry sends every instance of the set that is not
``stored`` at that destination, and nothing else. Storing an instance twice is harmless: a
PACS identifies it by its SOP Instance UID.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORED, REJECTED, UNCONFIRMED, NOT_SENT = "stored", "rejected", "unconfirmed", "not sent"
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s]+)):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """Where to send: the PACS's address and AE title, and ours."""

    host: str
    port: int
    called_aet: str
    calling_aet: str

    @property
    def key(self) -> str:
        """The destination's name in the receipt: ``CALLED_AET@host:port``."""
        return f"{self.called_aet}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for the TCP connection, the association, and each C-STORE answer."""

    connect: float
    acse: float
    dimse: float


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) -> ``(host, port)``; ``ValueError`` when malformed."""
    m = _HOSTPORT.match(text.strip())
    port = int(m["port"]) if m else 0
    if not m or not 0 < port < 65536:
        raise ValueError(f"--pacs must be HOST:PORT with a port in 1..65535, got {text!r}")
    return m["v6"] or m["host"], port


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _outcome(status: str, detail: str, code: int | None = None) -> dict[str, Any]:
    return {
        "status": status,
        "status_code": None if code is None else f"0x{code:04X}",
        "detail": detail,
        "time": _now(),
    }


def classify_status(code: int) -> dict[str, Any]:
    """The receipt entry of a C-STORE response status (PS3.4 Table B.2-1, PS3.7 Annex C)."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category = code_to_category(code)
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (category, ""))[1] or category
    if category in ("Success", "Warning"):
        return _outcome(STORED, f"{category}: {meaning}" if category == "Warning" else "", code)
    return _outcome(REJECTED, f"{category}: {meaning}", code)


class _Watch:
    """Event handlers that tell why an association failed: no TCP connection, or a reject."""

    def __init__(self) -> None:
        self.connected = False
        self.reject: str | None = None

    def handlers(self) -> list:
        from pynetdicom import evt

        return [(evt.EVT_CONN_OPEN, self._open), (evt.EVT_ACSE_RECV, self._acse)]

    def _open(self, event) -> None:
        self.connected = True

    def _acse(self, event) -> None:
        rsp = event.primitive
        if getattr(rsp, "result", None) in (0x01, 0x02):  # A-ASSOCIATE-RJ, PS3.8 9.3.4
            self.reject = f"{rsp.result_str}, source: {rsp.source_str}, reason: {rsp.reason_str}"


def _association_error(dest: Destination, watch: _Watch, timeouts: Timeouts) -> str:
    where = f"PACS {dest.host}:{dest.port}"
    if not watch.connected:
        return (
            f"{where} accepted no connection within {timeouts.connect:g} s (is it running, "
            "and are host and port right?)"
        )
    if watch.reject:
        return (
            f"{where} refused the association from calling AE title '{dest.calling_aet}' "
            f"to called AE title '{dest.called_aet}' ({watch.reject}); check both AE titles "
            "and that the PACS knows this sender"
        )
    return (
        f"{where} connected but no association came about (aborted, timed out after "
        f"{timeouts.acse:g} s, or none of the SOP classes was accepted)"
    )


def _send_each(assoc, files: list[tuple[Path, str]]) -> list[dict[str, Any]]:
    """One outcome per file over the established association ``assoc``, in order."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from pynetdicom.sop_class import uid_to_sop_class

    outcomes: list[dict[str, Any]] = []
    lost = None  # why the association ended, once it has
    for path, sop_class in files:
        if not assoc.is_established:
            ended = f"the association ended before its turn ({lost or 'closed by the PACS'})"
            outcomes.append(_outcome(NOT_SENT, ended))
            continue
        try:
            ds = dcmread(path)
        except (OSError, InvalidDicomError) as exc:
            outcomes.append(_outcome(NOT_SENT, f"{path}: unreadable ({exc})"))
            continue
        try:
            rsp = assoc.send_c_store(ds)
        except (ValueError, RuntimeError) as exc:  # e.g. no accepted presentation context
            name = getattr(uid_to_sop_class(sop_class), "name", sop_class) or sop_class
            outcomes.append(_outcome(NOT_SENT, f"not sent ({name}): {exc}"))
            continue
        if rsp is None or "Status" not in rsp:
            lost = "no answer to the C-STORE (association aborted or timed out)"
            outcomes.append(_outcome(UNCONFIRMED, lost))
        else:
            outcomes.append(classify_status(int(rsp.Status)))
    return outcomes


def store_files(
    files: list[tuple[Path, str]], dest: Destination, timeouts: Timeouts
) -> tuple[list[dict[str, Any]], str | None]:
    """C-STORE ``files`` ((path, SOP Class UID) pairs) in order over one association.

    Returns one outcome per file (see the module docstring) and the session's error message,
    ``None`` when every file was stored.
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=dest.calling_aet)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = ae.network_timeout = timeouts.dimse
    for sop_class in dict.fromkeys(c for _, c in files):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    watch = _Watch()
    assoc = ae.associate(
        dest.host, dest.port, ae_title=dest.called_aet, evt_handlers=watch.handlers()
    )
    if not assoc.is_established:
        error = _association_error(dest, watch, timeouts)
        return [_outcome(NOT_SENT, error) for _ in files], error
    try:
        outcomes = _send_each(assoc, files)
    finally:
        if assoc.is_established:
            assoc.release()
    bad = [o for o in outcomes if o["status"] != STORED]
    if not bad:
        return outcomes, None
    counts = {s: sum(o["status"] == s for o in bad) for s in (REJECTED, UNCONFIRMED, NOT_SENT)}
    said = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    return outcomes, f"PACS {dest.host}:{dest.port}: {said} (first: {bad[0]['detail']})"


def pending(instances: list[dict[str, Any]], dest_key: str) -> list[int]:
    """Indices of the receipt's instances not ``stored`` at ``dest_key``: what a send sends."""
    return [
        i
        for i, inst in enumerate(instances)
        if (inst.get("pacs") or {}).get(dest_key, {}).get("status") != STORED
    ]


def record_outcomes(
    receipt: dict[str, Any], dest_key: str, indices: list[int], outcomes: list[dict[str, Any]]
) -> dict[str, Any]:
    """A copy of ``receipt`` with ``outcomes`` entered for the instances ``indices``."""
    if len(indices) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes for {len(indices)} instances")
    out = copy.deepcopy(receipt)
    for i, outcome in zip(indices, outcomes, strict=True):
        pacs = out["instances"][i].get("pacs") or {}
        pacs[dest_key] = outcome
        out["instances"][i]["pacs"] = pacs
    return out


def deliver(
    receipt: dict[str, Any], export_dir: Path, dest: Destination, timeouts: Timeouts
) -> tuple[dict[str, Any], str | None]:
    """Send what ``dest`` lacks of the set in ``export_dir``; return the new receipt and error.

    The returned receipt has every attempted instance's outcome and one more entry in
    ``deliveries`` (destination, times, counts, error). Nothing is written here.
    """
    todo = pending(receipt["instances"], dest.key)
    started = _now()
    if todo:
        files = [
            (export_dir / receipt["instances"][i]["file"], receipt["instances"][i]["sop_class_uid"])
            for i in todo
        ]
        outcomes, error = store_files(files, dest, timeouts)
        receipt = record_outcomes(receipt, dest.key, todo, outcomes)
    else:
        outcomes, error = [], None
    stored_now = sum(o["status"] == STORED for o in outcomes)
    entry = {
        "destination": dest.key,
        "calling_aet": dest.calling_aet,
        "started": started,
        "finished": _now(),
        "attempted": len(todo),
        "stored": stored_now,
        "missing_after": len(pending(receipt["instances"], dest.key)),
        "error": error,
    }
    receipt = {**receipt, "deliveries": [*receipt.get("deliveries", []), entry]}
    return receipt, error
