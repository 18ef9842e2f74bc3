"""The heap figures of `make bench` on a build whose memory layout is the ESP32's: MicroPython's
unix port built 32-bit from the source tree MPY_DIR names (tools/mpybuild.py), in the two forms a
maker ships the firmware in:

  heap_min_kb_mpy32      the device code as .mpy files (compiled by that tree's mpy-cross), on
                         the unix32 build, which has umqtt.simple frozen in as stock ESP32
                         firmware does: stock firmware with `dashctl deploy`
  heap_min_kb_frozen32   `dash` frozen into the build (firmware/manifest_unix.py, as
                         firmware/manifest.py freezes it for the ESP32): the custom firmware
  ..._mqtt               the same with the cloud link connected to a real mosquitto
  heap_min_kb_naive32    the naive baseline (tools/bench_naive.py) on unix32, in the same run
  qstrs_life             names interned over a simulated week, and where the pools grow next

Each heap figure is bench.py's (`Bench.heap_min`: the smallest -X heapsize from which a
cold-boot order cycle succeeds at every size up to 8 KB above it), less what the harness that
stands in for main.py (tools/vdevice.py, compiled) holds beyond what main.py itself holds,
measured on the same build by tools/vharness.py and reported with it (`harness_extra_bytes_*`,
`*_with_harness`): the figure weighs what main.py would start.

Usage: python3 tools/bench32.py [-v]   prints the figures as JSON; says why and does nothing
without MPY_DIR. `make bench` calls measure(results) when MPY_DIR is set.
"""

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import devicectl  # noqa: E402
import mpybuild  # noqa: E402
from broker import Broker  # noqa: E402
from certs import ensure_certs  # noqa: E402
from drs_emulator import Emulator  # noqa: E402

REPO = HERE.parent
BUILD = REPO / "build" / "bench32"
LIB = REPO / "lib" / "dash"
# One entry of a qstr pool on a 32-bit build: a pointer to the text (4), its hash (2) and its
# length (1), as on an ESP32; a pool's head is 6 words. The first pool made at run time holds 20
# names and each next one twice as many as the last (py/qstr.c).
QSTR_ENTRY, QSTR_HEAD, QSTR_FIRST, GC_BLOCK32 = 7, 24, 20, 16
WEEK_DAYS = 7


def _micropython(exe, args, micropypath, timeout=120):
    proc = subprocess.run(
        [str(exe), "-X", "heapsize=4M", str(HERE / "vharness.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, MICROPYPATH=micropypath),
    )
    if proc.returncode != 0:
        raise RuntimeError("vharness %s failed:\n%s%s" % (args[0], proc.stdout, proc.stderr))
    return proc.stdout


def _path(art, lib):
    return "%s:%s:%s" % (art["harness"], lib, devicectl.MPLIB)


def harness_held(exe, art, lib):
    """Bytes held as the firmware starts by the harness (vdevice) and by main.py, on top of the
    firmware: {"harness": n, "main": n}. The bench subtracts the difference."""
    held = {}
    for mode, extra in (("harness", []), ("main", [str(REPO / "main.py")])):
        out = _micropython(exe, [mode, *extra], _path(art, lib))
        held[mode] = json.loads(out.strip().splitlines()[-1])["held"]
    return held


def harness_names(exe, art, lib):
    """Names the harness interns that no firmware module does (they are in the week's count)."""
    mods = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "bench")
    pools = bench.qstr_pools(_micropython(exe, ["names", ",".join(mods)], _path(art, lib)))
    return pools[2]["n_qstr"] - pools[1]["n_qstr"]


def _pool_bytes(names):
    return -(-(QSTR_HEAD + QSTR_ENTRY * names) // GC_BLOCK32) * GC_BLOCK32


def pool_step(count):
    """Where the qstr pools grew last and grow next, for `count` names interned at run time:
    pools of 20, 40, 80 ... names, each made, in one block of the heap, when the last is full."""
    pools, capacity, size = 0, 0, QSTR_FIRST
    while capacity < count:
        capacity += size
        size *= 2
        pools += 1
    last = size // 2 if pools else 0
    return {
        "pools": pools,
        "last_pool_at": capacity - last + 1 if pools else None,  # the name that made it
        "last_pool_bytes": _pool_bytes(last) if pools else 0,
        "next_pool_at": capacity + 1,
        "next_pool_names": size,
        "next_pool_bytes": _pool_bytes(size),
    }


def week(b, variant, mqtt=False):
    """A week of a device's life from a cold boot: an order with the access token expired and
    one with it valid, each followed by a delivery and a refill, then the rest of the week
    sampling, with its daily DeviceStatus and token refreshes. The interned names at the end."""
    dev = b.device(variant, mqtt=mqtt)
    dev.start()
    try:
        dev.run(30 * 60)
        b.order_cycles(dev, 1, cold=True)
        b.order_cycles(dev, 1, cold=False)
        b.emu.mark_delivered(bench.SLOT)
        dev.set_level(bench.FULL)
        dev.run(WEEK_DAYS * 24 * 3600)
        return bench.qstrs(dev)
    finally:
        dev.stop()


def _imports(name):
    """The dash modules `name` imports when it is imported (its module-level imports)."""
    tree = ast.parse((LIB / (name + ".py")).read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "dash":
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dash."):
            out.add(node.module[5:])
    return out


def module_heap(exe, lib, loaded):
    """What each of the `loaded` dash modules takes imported (tools/vheap.py), imported in an
    order where each one's dash imports come before it, so that each figure is its own."""
    order, seen = [], set()

    def visit(m):
        if m not in seen:
            seen.add(m)
            for dep in sorted(_imports(m) & set(loaded)):
                visit(dep)
            order.append(m)

    for m in sorted(loaded):
        visit(m)
    # vheap wants a phase to load and drop after the resident ones: one the cycle did not load.
    spare = next(p.stem for p in sorted(LIB.glob("*.py")) if p.stem not in seen)
    proc = subprocess.run(
        [str(exe), "-X", "heapsize=4M", str(HERE / "vheap.py"), lib, ",".join(order), spare],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sizes = json.loads(proc.stdout)["resident"]
    return {m: sizes[m] for m in order}


def heap_at_replenish(b, variant, exe, cross, art, lib, held, work):
    """The live heap as the Replenish request of a cold-boot cycle starts, and as the boot's
    token refresh starts (a large heap, after a collection), by consumer: each dash module
    loaded then (what tools/vheap.py measures it takes imported, its names' text included), the
    qstr pools' tables, the harness, and the rest: what the firmware made (state, config,
    tokens, slots, the transport's buffers and TLS context, the token refresh's room). Read
    through tools/vprobe.py, which wraps the transport's request."""
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    subprocess.run(
        [str(cross), "-o", str(probe / "vprobe.mpy")] + [str(HERE / "vprobe.py")],
        check=True,
    )
    dev = b.device(variant)  # its files and a fresh registration, as for the heap runs
    dev.set_level(bench.LOW)
    env = dict(
        os.environ,
        MICROPYPATH="%s:%s" % (probe, _path(art, lib)),
        VDEVICE_WALL=str(dev.wall),
    )
    proc = devicectl.spawn(["-m", "vprobe"], dev.root, None, env, exe)
    try:
        text, _ = proc.communicate("run %d\nexit\n" % (15 * 60 * 1000), timeout=120)
    finally:
        if proc.poll() is None:  # it hung: a timeout above
            proc.kill()
            proc.wait()
    lines = text.splitlines()
    # Each request of the cycle: its line, then the qstr pools' line qstr_info() printed.
    seen = [
        (json.loads(ln[len("@request ") :]), bench.qstr_pools(lines[i + 1])[0])
        for i, ln in enumerate(lines)
        if ln.startswith("@request ")
    ]
    replenish = [s for s in seen if "/replenish/" in s[0]["path"]]
    if not replenish:
        raise RuntimeError("no Replenish request in a cold-boot cycle:\n" + text[-2000:])

    def by_consumer(req, pool):
        mods = module_heap(exe, lib.split(":")[-1], req["modules"])  # the .mpy files' directory
        tables = pool["n_total_bytes"] - pool["n_str_data_bytes"]
        return {
            "alloc": req["alloc"],
            "modules": dict(sorted(mods.items(), key=lambda kv: -kv[1])),
            "modules_total": sum(mods.values()),
            "qstr_names": pool["n_qstr"],
            "qstr_tables": tables,
            "qstr_text": pool["n_str_data_bytes"],
            "harness": held["harness"],
            "rest": req["alloc"] - sum(mods.values()) - tables - held["harness"],
        }

    res = by_consumer(*replenish[0])
    res["requests"] = [[q["path"], q["alloc"]] for q, _ in seen]
    # The boot's token refresh, the cycle's first request: the heap is fullest there, and it
    # sets aside room for LwA's answer before it sends, so that is where the minimum is set.
    res["token_refresh"] = by_consumer(*seen[0])
    return res


def _heap(b, variant, mqtt, extra):
    """heap_min on `b`'s build, and the same less the whole KB the harness holds beyond
    main.py: rounded down, so that the figure never claims more than was taken away."""
    kb = b.heap_min(lambda k: b.cold_cycle_ok(variant, k, mqtt)[0])
    return kb, (kb - max(extra, 0) // 1024 if kb else None)


def measure(results, verbose=False, tree=None):
    """Adds the 32-bit figures to `results`; returns False, and says why, without MPY_DIR."""
    say = print if verbose else (lambda *a: None)
    try:
        tree = mpybuild.mpy_dir(tree)
    except mpybuild.BuildError as e:
        print("bench32: 32-bit figures skipped: %s" % e, file=sys.stderr)
        return False
    if not (devicectl.MPLIB / "umqtt" / "simple.py").is_file():
        raise RuntimeError("bench32: no %s: run `make mplib` first" % devicectl.MPLIB)
    say("bench32: building from %s" % tree)
    # make's own output only in mpybuild's log (build/mpy/*.log): a build says it is under way.
    cross = mpybuild.mpy_cross(tree)
    exe = {v: mpybuild.build(v, tree) for v in ("unix32", "unix32-frozen")}
    certs = ensure_certs(str(REPO / "build" / "certs"))
    BUILD.mkdir(parents=True, exist_ok=True)
    r = {}
    with (
        tempfile.TemporaryDirectory(dir=BUILD) as d,
        Emulator(
            str(REPO / "build" / "certs"),
            slots=(bench.SLOT,),
            client_id=bench.CLIENT_ID,
            client_secret=bench.CLIENT_SECRET,
        ) as emu,
    ):
        work = Path(d)
        with Broker(work / "broker", certs=certs) as broker:
            art = bench.build(work, cross)  # compiled by the tree's mpy-cross
            # The frozen build: the same harness, and dash and umqtt.simple from the firmware
            # image (.frozen), as on a board.
            forms = {
                "mpy32": (exe["unix32"], "mpy", ".frozen:%s" % art["mpy"]),
                "frozen32": (exe["unix32-frozen"], "frozen", ".frozen"),
            }
            for form, (binary, variant, lib) in forms.items():
                (work / form).mkdir()
                b = bench.Bench(emu, certs, art, work / form, broker, binary)
                held = harness_held(binary, art, lib)
                extra = held["harness"] - held["main"]
                r["harness_extra_bytes_" + form] = extra
                for mqtt, suffix in ((False, ""), (True, "_mqtt")):
                    say("bench32: heap, %s%s" % (form, suffix))
                    total, net = _heap(b, variant, mqtt, extra)
                    r["heap_min_kb_%s%s_with_harness" % (form, suffix)] = total
                    r["heap_min_kb_%s%s" % (form, suffix)] = net
                say("bench32: the heap at the Replenish call, %s" % form)
                r.setdefault("heap_at_replenish32", {})[form] = heap_at_replenish(
                    b, variant, binary, cross, art, lib, held, work / form
                )
                if form == "mpy32":
                    say("bench32: heap, naive")
                    r["heap_min_kb_naive32"] = b.heap_min(b.naive_ok)
                say("bench32: a week, %s" % form)
                names = harness_names(binary, art, lib)
                life = {"harness_names": names}
                for mqtt, key in ((False, ""), (True, "_mqtt")):
                    q = week(b, variant, mqtt)
                    count = q["count"] - names
                    life["count" + key] = count
                    # Measured with the harness's names in; `pools` is without them.
                    life["pool_bytes_with_harness" + key] = q["pool_bytes"]
                    life.update({k + key: v for k, v in pool_step(count).items()})
                r["qstrs_life" if form == "mpy32" else "qstrs_life_frozen32"] = life
    results.update(r)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mpy-dir", help="MicroPython source tree (default: $MPY_DIR)")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    r = {}
    try:
        if not measure(r, args.verbose, args.mpy_dir):
            return 0
    except mpybuild.BuildError as e:
        print("bench32: %s" % e, file=sys.stderr)
        return 1
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
