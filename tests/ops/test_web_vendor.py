"""The page's chart library is the pinned npm release, byte for byte (streams/serving/page/vendor/PIN.json).

Asks the npm registry for the pinned tarball (`npm pack`, as deploy/web/fetch-uplot.sh does): its integrity
must be the pinned one and the shipped files must be the tarball's. A machine without npm fails here.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import orjson

VENDOR = Path(__file__).resolve().parents[2] / "streams" / "serving" / "page" / "vendor"
IN_TARBALL = {"uPlot.iife.min.js": "package/dist/uPlot.iife.min.js", "uPlot.min.css": "package/dist/uPlot.min.css",
              "LICENSE": "package/LICENSE"}


def test_the_shipped_uplot_is_the_pinned_npm_tarball(tmp_path: Path) -> None:
    pin = orjson.loads((VENDOR / "PIN.json").read_bytes())
    npm = shutil.which("npm")
    assert npm, "npm is needed to check the page's pinned chart library"
    subprocess.run([npm, "pack", "--silent", f"{pin['package']}@{pin['version']}"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    (tarball,) = tmp_path.glob("*.tgz")
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    assert integrity == pin["integrity"]
    with tarfile.open(tarball) as archive:
        for name, member in IN_TARBALL.items():
            packed = archive.extractfile(member)
            assert packed is not None
            content = packed.read()
            assert content == (VENDOR / name).read_bytes(), name
            assert hashlib.sha256(content).hexdigest() == pin["files"][name], name
    assert set(pin["files"]) == set(IN_TARBALL)
