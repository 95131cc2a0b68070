"""Delivery of an exported set to a PACS with C-STORE (pynetdicom), and its record.

The receipt lists every instance; each instance's ``pacs`` entry maps a destination
(``CALLED_AET@host:port``) to the outcome of the last attempt to store it there:

* ``stored``      the PACS answered the C-STORE with Success or a Warning (stored anyway);
* ``rejected``    the PACS answered with a Failure status (code and meaning recorded);
* ``unconfirmed`` the request went out but no answer came (aborted or timed out): the PACS may
                  or may not hold it, so it counts as missing and is sent again;
* ``not sent``    it never went out (host not found, no connection, association refused, no
                  accepted presentation context, association lost before its turn);
* ``gone``        recorded as ``stored`` by an earlier delivery, but the PACS no longer holds it
                  (or could not be asked): set just before it is sent again.

Only ``stored`` counts as arrived, and a receipt is not taken for the state of the PACS: before
a retry, the PACS is asked which of the instances recorded as stored it still holds (C-FIND at
IMAGE level, Study Root Query/Retrieve Information Model, PS3.4 C.4.1; one query per series,
as the hierarchical model requires). The retry then sends every instance of the set the PACS
does not hold, and nothing else; ``force`` sends everything. Storing an instance twice is
harmless: a PACS identifies it by its SOP Instance UID.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORED, REJECTED, UNCONFIRMED, NOT_SENT = "stored", "rejected", "unconfirmed", "not sent"
GONE = "gone"
# PS3.8 9.3.8 (A-ABORT PDU): who aborted.
_ABORT_SOURCE = {0: "the PACS (service user)", 2: "the PACS's network layer (service provider)"}
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
    """Event handlers that tell why an association failed or ended: no TCP connection, a
    reject, or an abort by the PACS."""

    def __init__(self) -> None:
        self.connected = False
        self.reject: str | None = None
        self.abort: str | None = None

    def handlers(self) -> list:
        from pynetdicom import evt

        return [(evt.EVT_CONN_OPEN, self._open), (evt.EVT_ACSE_RECV, self._acse)]

    def _open(self, event) -> None:
        self.connected = True

    def _acse(self, event) -> None:
        rsp = event.primitive
        if getattr(rsp, "result", None) in (0x01, 0x02):  # A-ASSOCIATE-RJ, PS3.8 9.3.4
            self.reject = f"{rsp.result_str}, source: {rsp.source_str}, reason: {rsp.reason_str}"
        name = type(rsp).__name__
        if name == "A_ABORT":
            source = _ABORT_SOURCE.get(getattr(rsp, "_abort_source", None), "the PACS")
            self.abort = f"A-ABORT from {source}"
        elif name == "A_P_ABORT":
            self.abort = f"A-P-ABORT, provider reason {getattr(rsp, '_provider_reason', None)}"


def open_association(dest: Destination, timeouts: Timeouts, contexts: list[str]):
    """(association, its watch, None) with ``dest`` proposing the SOP classes ``contexts``, or
    (None, watch, the reason in words, naming the host) when none came about."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    try:  # the name first: pynetdicom's own error would not say which host it was
        socket.getaddrinfo(dest.host, dest.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return None, None, f"PACS host {dest.host!r} not found ({why}); check the host in --pacs"
    ae = AE(ae_title=dest.calling_aet)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = ae.network_timeout = timeouts.dimse
    for sop_class in dict.fromkeys(contexts):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    watch = _Watch()
    try:
        assoc = ae.associate(
            dest.host, dest.port, ae_title=dest.called_aet, evt_handlers=watch.handlers()
        )
    except OSError as exc:
        return None, watch, f"PACS {dest.host}:{dest.port}: {exc}"
    if not assoc.is_established:
        return None, watch, _association_error(dest, watch, timeouts)
    return assoc, watch, None


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


def _no_answer(watch: _Watch, first: bool, calling_aet: str) -> str:
    """Why a C-STORE got no answer: an abort by the PACS (and what that means when it came at
    the first C-STORE), or a timeout."""
    abort = watch.abort
    if abort is None:
        return "no answer to the C-STORE (association aborted or timed out)"
    said = f"the PACS ended the association ({abort}) instead of answering the C-STORE"
    if first:
        said += (
            f": it accepted the association but stores nothing from calling AE title "
            f"'{calling_aet}' (a PACS that lets any AE title associate, e.g. for C-ECHO, "
            "refuses storage from senders it does not know); check --aet and that the PACS "
            "knows this sender"
        )
    return said


def _send_each(assoc, watch: _Watch, files: list[tuple[Path, str]], dest: Destination, settle):
    """One outcome per file over the established association ``assoc``, in order; ``settle``:
    seconds to wait for an association that ended mid-request to finish."""
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
            # The association's own thread reads an abort off the wire (and tells the watch)
            # after the C-STORE has given up: let it finish first. It ends either way, as an
            # abort or after the C-STORE timed out and aborted the association itself.
            assoc.join(timeout=settle)
            lost = _no_answer(watch, not outcomes, dest.calling_aet)
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
    assoc, watch, error = open_association(dest, timeouts, [c for _, c in files])
    if assoc is None:
        return [_outcome(NOT_SENT, error) for _ in files], error
    try:
        outcomes = _send_each(assoc, watch, files, dest, timeouts.acse)
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


def query_held(
    study_uid: str, series_uids: list[str], dest: Destination, timeouts: Timeouts
) -> tuple[set[str] | None, str | None]:
    """(SOP Instance UIDs ``dest`` holds of the series ``series_uids`` of the study, None), or
    (None, why it could not be asked).

    C-FIND at IMAGE level in the Study Root Query/Retrieve Information Model (PS3.4 C.4.1):
    Study and Series Instance UID as unique keys, SOP Instance UID as the return key. Pending
    answers (0xFF00, 0xFF01) carry one instance each; Success ends the query.
    """
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    assoc, _, error = open_association(dest, timeouts, [FIND])
    if assoc is None:
        return None, error
    held: set[str] = set()
    try:
        for series in series_uids:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series
            query.SOPInstanceUID = ""
            for status, found in assoc.send_c_find(query, FIND):
                code = int(status.Status) if status and "Status" in status else None
                if code in (0xFF00, 0xFF01) and found is not None and "SOPInstanceUID" in found:
                    held.add(str(found.SOPInstanceUID))
                elif code != 0x0000 and code not in (0xFF00, 0xFF01):
                    said = "no answer" if code is None else f"status 0x{code:04X}"
                    return None, f"PACS {dest.host}:{dest.port}: C-FIND gave {said}"
    except (ValueError, RuntimeError) as exc:  # e.g. the PACS accepted no C-FIND context
        return None, f"PACS {dest.host}:{dest.port}: C-FIND not possible ({exc})"
    finally:
        if assoc.is_established:
            assoc.release()
    return held, None


def _check_held(
    receipt: dict[str, Any], dest: Destination, timeouts: Timeouts
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Ask ``dest`` which of the instances recorded as stored there it still holds.

    Returns the receipt with the ones it does not hold (all of them when it could not be
    asked: sending again is harmless, trusting the receipt is not) set to ``gone``, and the
    query's record for the delivery entry (``None``: nothing was recorded as stored).
    """
    rows = receipt["instances"]
    missing = set(pending(rows, dest.key))
    recorded = [i for i in range(len(rows)) if i not in missing]
    if not recorded:
        return receipt, None
    series = sorted({rows[i]["series_instance_uid"] for i in recorded})
    study = receipt["study"]["study_instance_uid"]
    held, error = query_held(study, series, dest, timeouts)
    if held is None:
        gone = recorded
        detail = f"recorded as stored, but the PACS could not be asked ({error}): sent again"
    else:
        gone = [i for i in recorded if rows[i]["sop_instance_uid"] not in held]
        detail = "recorded as stored, but the PACS no longer holds it (C-FIND): sent again"
    query = {
        "method": "C-FIND IMAGE, Study Root",
        "recorded_stored": len(recorded),
        "held": None if held is None else len(recorded) - len(gone),
        "gone": None if held is None else len(gone),
        "error": error,
    }
    receipt = record_outcomes(receipt, dest.key, gone, [_outcome(GONE, detail) for _ in gone])
    return receipt, query


def deliver(
    receipt: dict[str, Any],
    export_dir: Path,
    dest: Destination,
    timeouts: Timeouts,
    force: bool = False,
) -> tuple[dict[str, Any], str | None]:
    """Send what ``dest`` lacks of the set in ``export_dir``; return the new receipt and error.

    What it lacks: every instance not recorded as ``stored`` there, and every recorded one the
    PACS no longer holds (``_check_held``); with ``force``, everything, without asking. The
    returned receipt has every attempted instance's outcome and one more entry in
    ``deliveries`` (destination, times, the query, counts, error). Nothing is written here.
    """
    started = _now()
    query = None
    if force:
        todo = list(range(len(receipt["instances"])))
    else:
        receipt, query = _check_held(receipt, dest, timeouts)
        todo = pending(receipt["instances"], dest.key)
    if todo:
        rows = receipt["instances"]
        files = [(export_dir / rows[i]["file"], rows[i]["sop_class_uid"]) for i in todo]
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
        "force": force,
        "query": query,
        "attempted": len(todo),
        "stored": stored_now,
        "missing_after": len(pending(receipt["instances"], dest.key)),
        "error": error,
    }
    receipt = {**receipt, "deliveries": [*receipt.get("deliveries", []), entry]}
    return receipt, error
