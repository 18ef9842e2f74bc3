"""Host-side control of a firmware process: the real `micropython` running tools/vdevice.py
with a temporary directory as its flash. Used by the integration tests and by `make sim`."""

import json
import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MICROPYTHON = os.environ.get("MICROPYTHON", str(REPO / ".venv" / "bin" / "micropython"))
# micropython-lib's umqtt.simple (frozen into stock ESP32 firmware; `make mplib` puts it here).
MPLIB = REPO / "build" / "mplib"
LOG_LINE = re.compile(r"^\[\s*(\d+)\] (\S+) (\{.*\})$")
DEFAULT_CONFIG = {
    "slot_id": "slot-a",
    "low": 200,
    "high": 800,
    "confirm_samples": 3,
    "warmup_samples": 2,
    "sample_s": 60,
    "inprogress_backoff_s": 6 * 3600,
    "retry_base_s": 900,
    "retry_cap_s": 3600,
    "http_timeout_s": 3,
    "sensor": {
        "kind": "file",
        "path": "level.txt",
        "raw_empty": 0,
        "raw_full": 1000,
        "capacity": 1000,
    },
}


def spawn(args, cwd, heap_kb=None, env=None, micropython=None):
    """The real `micropython` running `args` (a heap of `heap_kb` KB, as a board's smaller one,
    or its own default), talking in lines over pipes. `micropython`: another build of it than
    the venv's (tools/mpybuild.py's 32-bit ones)."""
    heap = ["-X", "heapsize=%dK" % heap_kb] if heap_kb else []
    return subprocess.Popen(
        [str(micropython or MICROPYTHON), *heap, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


class Device:
    """One simulated board. `events` collects every log event as (uptime_s, tag, fields)."""

    def __init__(
        self,
        root,
        ca_file,
        port,
        refresh_token,
        client_id,
        client_secret="",
        config=None,
        wall=1790000000,
        heap_kb=None,
        lib=None,
        env=None,
        harness=None,
        secrets=None,
        micropython=None,
    ):
        self.heap_kb = heap_kb  # micropython -X heapsize=, as a board's smaller heap
        self.lib = lib or REPO / "lib"  # the device code: sources, or a tree of .mpy files
        self.extra_env = env or {}  # e.g. VDEVICE_ROMFS=image: code and harness from ROMFS
        # A directory with vdevice.mpy and vbench.mpy: the harness compiled, so that compiling
        # it at start-up weighs nothing in heap measurements.
        self.harness = harness
        self.micropython = micropython  # None: the venv's (MICROPYTHON)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.wall = wall
        cfg = json.loads(json.dumps(DEFAULT_CONFIG))
        cfg["drs_url"] = "https://localhost:%d" % port
        cfg["lwa_url"] = "https://localhost:%d/auth/o2/token" % port
        if config and "slots" in config:  # several slots: the one-slot keys go
            for k in ("slot_id", "low", "high", "confirm_samples", "warmup_samples", "sensor"):
                cfg.pop(k)
        cfg.update(config or {})
        self.write_json("config.json", cfg)
        secret = {"client_id": client_id}
        if refresh_token:
            secret["refresh_token"] = refresh_token
        if client_secret:
            secret["client_secret"] = client_secret
        secret.update(secrets or {})
        self.write_json("secrets.json", secret)
        shutil.copy(ca_file, self.root / "ca.pem")
        self.set_level(900)
        self.proc = None
        self.events = []
        self.output = []  # every line the process printed, for secret checks
        self.boot_ok = None
        self.elapsed = 0  # virtual seconds lived, across restarts: the wall clock runs on

    def write_json(self, name, obj):
        (self.root / name).write_text(json.dumps(obj))

    def set_level(self, raw, path="level.txt"):
        (self.root / path).write_text("%d\n" % raw)

    def start(self):
        wall = self.wall + self.elapsed if self.wall else 0
        env = dict(os.environ, MICROPYPATH="%s:%s" % (self.lib, MPLIB), VDEVICE_WALL=str(wall))
        env.update(self.extra_env)
        main = [str(REPO / "tools" / "vdevice.py")]
        if self.harness:
            env["MICROPYPATH"] = "%s:%s:%s" % (self.harness, self.lib, MPLIB)
            # From a ROMFS image holding the device code and the harness: vrom mounts it.
            main = ["-m", "vrom" if "VDEVICE_ROMFS" in env else "vdevice"]
        self.proc = spawn(main, self.root, self.heap_kb, env, self.micropython)
        self._q = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._q), daemon=True).start()
        boot = self._wait("@boot")
        self.boot_ok = boot["ok"]
        self.romfs_heap = boot.get("romfs_heap", 0)
        return self

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def _next_line(self, timeout):
        """The device's next line of output, kept in `output`."""
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("device said nothing for %ds" % timeout) from None
        if line is None:
            raise RuntimeError("device exited:\n" + "\n".join(self.output[-30:]))
        self.output.append(line)
        return line

    def _wait(self, marker, timeout=120):
        while True:
            line = self._next_line(timeout)
            if line.startswith(marker + " "):
                return json.loads(line[len(marker) + 1 :])
            m = LOG_LINE.match(line)
            if m:
                self.events.append((int(m.group(1)), m.group(2), json.loads(m.group(3))))

    def _send(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def run(self, seconds):
        """Advance virtual time; returns the status afterwards."""
        self._send("run %d" % int(seconds * 1000))
        self.elapsed += int(seconds)
        return self._wait("@done")

    def status(self):
        self._send("status")
        return self._wait("@status")

    def command(self, name, arg=""):
        """challenge, register CODE, deregister, relay JSON: the bring-up commands."""
        self._send(("%s %s" % (name, arg)).strip())
        return self._wait("@" + name)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self._send("exit")
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self):
        """A power cut: no goodbye, no flush of anything the firmware did not write itself, and
        the RTC memory (a file on the unix port) is gone."""
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        (self.root / "rtc.bin").unlink(missing_ok=True)

    def restart(self):
        self.stop()
        self.events = []
        return self.start()

    def tagged(self, tag):
        return [f for _, t, f in self.events if t == tag]

    def device_record(self):
        raw = (self.root / "state.json").read_bytes()
        return json.loads(raw[: raw.rfind(b"\n#")])

    def state_record(self, slot=None):
        """One slot's persisted record (the first configured slot's by default)."""
        slots = self.device_record()["slots"]
        return slots[slot] if slot else next(iter(slots.values()))
