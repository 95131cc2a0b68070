"""``gvae view``: the OHIF viewer on loopback in front of a PACS's DICOMweb API.

The work and its documentation: :mod:`pipeline.export.viewer`.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from pipeline.errors import StageError
from pipeline.export.viewer import NPM_DIR, Viewer, ViewerError, install


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--dicomweb",
        metavar="URL",
        help="the PACS's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (Orthanc's plugin)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=3000,
        help="port to serve on, 0: any free (default: %(default)s)",
    )
    parser.add_argument("--study", metavar="UID", help="print the URL that opens this study")
    parser.add_argument(
        "--npm-dir",
        type=Path,
        default=NPM_DIR,
        metavar="DIR",
        help="folder of package.json + package-lock.json pinning @ohif/app (default: %(default)s)",
    )
    parser.add_argument(
        "--install-only",
        action="store_true",
        help="install the pinned viewer if needed, print its folder and exit",
    )


def main(args: argparse.Namespace) -> int:
    """Install the viewer if needed and serve it until interrupted (Ctrl-C)."""
    try:
        dist = install(args.npm_dir)
        if args.install_only:
            print(dist)
            return 0
        if not args.dicomweb:
            raise StageError("--dicomweb URL is required (the PACS's DICOMweb root)")
        viewer = Viewer(dist, args.dicomweb, host=args.host, port=args.port).start()
    except (ViewerError, ValueError) as exc:
        raise StageError(str(exc)) from None
    url = viewer.study_url(args.study) if args.study else viewer.url
    print(f"gvae view: OHIF at {url} (DICOMweb from {args.dicomweb}); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return 0
