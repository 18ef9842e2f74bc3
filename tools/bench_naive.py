"""The naive baseline for `make bench`: one order cycle the way most MicroPython users would
write it, with the frozen `requests` (CERT_NONE), `json` and a plain file write. Runs under
`micropython` in a directory holding naive.json; waits for a line on stdin before each cycle
and prints one JSON line per cycle. Not device code: it is here to be measured against."""

import json
import sys
import time

import requests

cfg = json.load(open("naive.json"))
while sys.stdin.readline():
    t0 = time.ticks_us()
    ok = False
    try:
        r = requests.post(
            cfg["lwa_url"],
            data="grant_type=refresh_token&refresh_token=%s&client_id=%s&client_secret=%s"
            % (cfg["refresh_token"].replace("|", "%7C"), cfg["client_id"], cfg["client_secret"]),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        tok = r.json()
        r.close()
        cfg["refresh_token"] = tok["refresh_token"]
        r = requests.post(
            cfg["drs_url"] + "/replenish/" + cfg["slot_id"],
            headers={
                "Authorization": "Bearer " + tok["access_token"],
                "x-amzn-accept-type": "com.amazon.dash.replenishment.DrsReplenishResult@1.0",
                "x-amzn-type-version": "com.amazon.dash.replenishment.DrsReplenishInput@1.0",
            },
        )
        ans = r.json()
        r.close()
        with open("naive.json", "w") as f:
            cfg["eventInstanceId"] = ans["eventInstanceId"]
            f.write(json.dumps(cfg))
        ok = True
    except Exception as e:  # noqa: BLE001 - the measurement reports any failure
        print("error", repr(e))
    print(json.dumps({"ok": ok, "ms": time.ticks_diff(time.ticks_us(), t0) / 1000}))
