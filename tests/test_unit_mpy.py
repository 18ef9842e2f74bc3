"""Runs the pure-logic unit tests (tests/unit) inside the real MicroPython interpreter."""

import os
import subprocess

from conftest import REPO


def test_unit_suite_passes_under_micropython():
    env = dict(os.environ, MICROPYPATH="%s:%s" % (REPO / "lib", REPO / "build" / "mplib"))
    p = subprocess.run(
        [str(REPO / ".venv/bin/micropython"), "tests/unit/run.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert " 0 failed" in p.stdout.splitlines()[-1]
