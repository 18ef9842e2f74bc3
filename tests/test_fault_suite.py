"""`make faults`' deterministic slice, so that `make test` has it: tools/faults.py --quick. A
handful of power cuts in a cold order cycle (kill points found by instrumenting the firmware,
spread over its flash writes and its requests), one hostile server under a small heap and one
back-off in real time; every invariant holds and the summary is the last line, as JSON."""

import json
import subprocess
import sys

from conftest import REPO
from faults import COUNTS

INVARIANTS = COUNTS


def test_the_quick_fault_slice_holds_every_invariant():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "faults.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout.strip().splitlines()
    assert out, proc.stderr[-3000:]
    res = json.loads(out[-1])
    for key in ("cases", "passed", *INVARIANTS, "details"):
        assert key in res, key
    tail = "\n".join(out[-20:]) + proc.stderr[-2000:]
    assert res["cases"] >= 9 and res["passed"] == res["cases"], tail
    assert {k: res[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0), tail
    assert res["order_points"] > 20  # the points were counted, not picked by hand
    assert res["hostile_faults_unserved"] == 0  # the hostile server was reached
    assert res["registrations_lost_in_flight"] == 1  # the cut after LwA rotated the token
    assert proc.returncode == 0, tail
