"""Builds MicroPython's unix port and mpy-cross from a MicroPython source tree, and caches them
under build/mpy/, for the 32-bit figures of `make bench` (tools/bench32.py) and the frozen-build
test (tests/test_build32.py).

MPY_DIR (the environment, or --mpy-dir) names the tree, as MicroPython's own port builds are
pointed at a checkout. A maker points it at their own clone:

    git clone https://github.com/micropython/micropython
    cd micropython && git checkout v1.29.0   # the .mpy version the board's firmware runs
    git submodule update --init lib/mbedtls lib/micropython-lib
    export MPY_DIR=$PWD

or at an unpacked source tarball of the same layout. The tree is only read: every build goes
into build/mpy/ here (make's BUILD=, and mpy-cross's own BUILD=), so a maker's clone stays clean
and the objects stay between runs for make to reuse; copying the tree first would give neither.

Variants (build/mpy/<variant>/micropython):
  unix32         the unix port as a 32-bit (i386) program: 4-byte words and 16-byte GC blocks,
                 the ESP32's object sizes; -X heapsize, real TLS (mbedTLS), vfs.VfsRom. No btree
                 (the tree needs berkeley-db) and no ffi (libffi): the firmware uses neither.
                 Frozen in, as in stock ESP32 firmware: umqtt.simple
                 (firmware/manifest_stock_unix.py), so the cloud link's client costs no heap.
  unix32-frozen  the same with firmware/manifest_unix.py frozen in: the port's own frozen
                 modules, umqtt.simple and the `dash` package, as firmware/manifest.py freezes
                 them into ESP32 firmware.
  mpy-cross      build/mpy/mpy-cross/mpy-cross, the tree's compiler (a host program).
The 32-bit builds need gcc's 32-bit C library (Debian: apt-get install gcc-multilib).

Cache: a build is redone only when its stamp (build/mpy/<variant>/stamp.json) no longer matches:
a hash over the tree's files (paths, sizes, mtimes), MPY_DIR, the make options, and the contents
of the build's manifest (and of lib/dash/*.py, for the build that freezes it). A changed tree or
option builds from scratch (an older file put back keeps an older mtime, which make would not
see); a changed manifest or lib/dash rebuilds only the frozen part.

Usage: python3 tools/mpybuild.py [--mpy-dir DIR] [-v] [VARIANT ...]   (default: all of them)
Prints each built binary's path, one a line.
"""

import argparse
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "mpy"
MANIFEST = REPO / "firmware" / "manifest_unix.py"
STOCK = REPO / "firmware" / "manifest_stock_unix.py"
# What the unix port compiles besides py/ extmod/ shared/ ports/unix: the rest of lib/ (a full
# clone has many submodules for other ports) and ports/* other than unix are not read.
_TREE_DIRS = ("py", "extmod", "shared", "drivers", "tools", "mpy-cross", "ports/unix")
_TREE_LIBS = (
    "mbedtls",
    "mbedtls_errors",
    "micropython-lib",
    "littlefs",
    "libm",
    "libm_dbl",
    "uzlib",
    "re1.5",
    "crypto-algorithms",
    "oofatfs",
)
# The 32-bit build as the vendor README checks it; btree and ffi need sources or a library
# (berkeley-db, libffi) the firmware has no use for.
_UNIX32 = [
    "VARIANT=standard",
    "MICROPY_PY_BTREE=0",
    "MICROPY_PY_FFI=0",
    "CFLAGS_EXTRA=-m32",
    "LDFLAGS_EXTRA=-m32",
]
VARIANTS = {
    "unix32": {"make": _UNIX32, "manifest": STOCK},
    "unix32-frozen": {"make": _UNIX32, "manifest": MANIFEST},  # includes STOCK
}
ALL = ("mpy-cross", *VARIANTS)


class BuildError(Exception):
    """A build that cannot be made, with what to do about it."""


def mpy_dir(arg=None):
    """The MicroPython tree: `arg`, or MPY_DIR. Raises BuildError saying how to set it."""
    raw = arg or os.environ.get("MPY_DIR")
    if not raw:
        raise BuildError(
            "MPY_DIR is not set: point it at a MicroPython source tree, your clone of"
            " https://github.com/micropython/micropython with lib/mbedtls and"
            " lib/micropython-lib (`git submodule update --init lib/mbedtls lib/micropython-lib`),"
            " e.g. `export MPY_DIR=$HOME/micropython`"
        )
    tree = Path(raw).expanduser().resolve()
    if not (tree / "py" / "mpconfig.h").is_file() or not (tree / "ports" / "unix").is_dir():
        raise BuildError("MPY_DIR=%s is not a MicroPython source tree (no py/, ports/unix/)" % raw)
    for sub, probe in (("mbedtls", "library"), ("micropython-lib", "README.md")):
        if not (tree / "lib" / sub / probe).exists():
            raise BuildError(
                "%s has no lib/%s: `git -C %s submodule update --init lib/%s`"
                % (tree, sub, tree, sub)
            )
    return tree


@functools.cache  # once per tree and run: it walks thousands of files
def _tree_hash(tree):
    """A hash of the files the unix port's build reads: paths, sizes and mtimes (checking out
    or unpacking another version changes them; hashing contents would read ~100 MB of a full
    clone for each bench run). Build directories a maker made in the tree are left out."""
    h = hashlib.sha256()
    roots = [tree / d for d in _TREE_DIRS] + [tree / "lib" / d for d in _TREE_LIBS]
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != ".git" and not d.startswith("build"))
            for name in sorted(files):
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:  # a dangling link
                    continue
                h.update(("%s %d %d\n" % (p, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


def _inputs_hash(manifest):
    """A build's frozen inputs of ours, by content: the manifests, and the package when the
    build freezes `dash`."""
    h = hashlib.sha256()
    dash = sorted((REPO / "lib" / "dash").glob("*.py")) if manifest == MANIFEST else []
    for p in [STOCK, MANIFEST, *dash]:
        h.update(p.relative_to(REPO).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _check_m32():
    """gcc must link a 32-bit program; Debian's gcc has the 32-bit C library in gcc-multilib."""
    cc = "gcc"  # what MicroPython's make uses (py/mkenv.mk sets CC, whatever the environment)
    if shutil.which(cc) is None:
        raise BuildError("no C compiler (%s): apt-get install build-essential gcc-multilib" % cc)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.c"
        src.write_text("int main(void) { return sizeof(void *) == 4 ? 0 : 1; }\n")
        exe = Path(d) / "t"
        res = subprocess.run([cc, "-m32", str(src), "-o", str(exe)], capture_output=True)
        if res.returncode != 0 or subprocess.run([str(exe)]).returncode != 0:
            raise BuildError(
                "%s cannot build or run a 32-bit program (-m32): install the 32-bit C library,"
                " `apt-get install gcc-multilib` on Debian or Ubuntu" % cc
            )


def _make(args, log, verbose, cross=None):
    """Runs make; its output goes to `log`, and on screen too with `verbose`."""
    if shutil.which("make") is None:
        raise BuildError("no `make`: apt-get install build-essential")
    cmd = ["make", "-j%d" % (os.cpu_count() or 1), *args]
    # The tree's Python tools (makemanifest, mpy-tool) would leave __pycache__ in it.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if cross:  # makemanifest.py reads mpy-cross's path from the environment, not from make
        env["MICROPY_MPYCROSS"] = str(cross)
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in proc.stdout:
            f.write(line)
            if verbose:
                sys.stdout.write(line)
        proc.wait()
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        raise BuildError("make failed (whole log: %s):\n%s" % (log, "\n".join(tail)))


def _stamp(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class _Lock:
    """One build at a time in build/mpy/ (pytest runs the suite on two workers)."""

    def __enter__(self):
        OUT.mkdir(parents=True, exist_ok=True)
        self.f = open(OUT / ".lock", "w")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def mpy_cross(tree=None, verbose=False):
    """The tree's mpy-cross, built if needed: its path."""
    tree = mpy_dir(tree)
    with _Lock():
        return _mpy_cross(tree, verbose)


def _mpy_cross(tree, verbose):
    build = OUT / "mpy-cross"
    exe = build / "mpy-cross"
    want = {"mpy_dir": str(tree), "tree": _tree_hash(tree)}
    stamp = build / "stamp.json"
    if exe.is_file() and _stamp(stamp) == want:
        return exe
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    print("mpybuild: building mpy-cross from %s" % tree, file=sys.stderr)
    _make(["-C", str(tree / "mpy-cross"), "BUILD=" + str(build)], OUT / "mpy-cross.log", verbose)
    stamp.write_text(json.dumps(want))
    return exe


def build(variant, tree=None, verbose=False):
    """The unix port's `variant` (see VARIANTS), built if its stamp does not match: the path of
    its `micropython`. Raises BuildError with what to do when it cannot be built."""
    if variant == "mpy-cross":
        return mpy_cross(tree, verbose)
    if variant not in VARIANTS:
        raise BuildError("unknown variant %r (%s)" % (variant, ", ".join(ALL)))
    spec = VARIANTS[variant]
    tree = mpy_dir(tree)
    with _Lock():
        cross = _mpy_cross(tree, verbose)
        out = OUT / variant
        exe = out / "micropython"
        args = list(spec["make"]) + ["FROZEN_MANIFEST=" + str(spec["manifest"])]
        want = {
            "mpy_dir": str(tree),
            "tree": _tree_hash(tree),
            "make": args,
            "inputs": _inputs_hash(spec["manifest"]),
        }
        stamp = out / "stamp.json"
        have = _stamp(stamp)
        if exe.is_file() and have == want:
            return exe
        _check_m32()
        if have is None or any(have.get(k) != want[k] for k in ("mpy_dir", "tree", "make")):
            shutil.rmtree(out, ignore_errors=True)
        else:
            # Only lib/dash or the manifest changed: regenerate the frozen code alone. Its
            # compiled files go, so that a file put back with an older mtime is compiled too.
            shutil.rmtree(out / "frozen_mpy", ignore_errors=True)
            (out / "frozen_content.c").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)  # a build that fails half-way is never taken as done
        # Said whatever `verbose`: a silent minute looks like a hang.
        print("mpybuild: building %s from %s (about a minute)" % (variant, tree), file=sys.stderr)
        _make(
            ["-C", str(tree / "ports" / "unix"), *args]
            + ["BUILD=" + str(out), "MICROPY_MPYCROSS=" + str(cross)],
            OUT / (variant + ".log"),
            verbose,
            cross,
        )
        stamp.write_text(json.dumps(want))
        return exe


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", metavar="VARIANT", help=", ".join(ALL))
    ap.add_argument("--mpy-dir", help="MicroPython source tree (default: $MPY_DIR)")
    ap.add_argument("--verbose", "-v", action="store_true", help="show make's output")
    args = ap.parse_args(argv)
    try:
        for v in args.variants or ALL:
            print(build(v, args.mpy_dir, args.verbose))
    except BuildError as e:
        print("mpybuild: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
