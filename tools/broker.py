"""A real MQTT broker for tests, the simulator and the bench: Debian's `mosquitto`, started on
loopback ports with the test CA (tools/certs.py), password authentication and an ACL that
keeps each device to its own topics, as a maker's cloud (AWS IoT Core, say) would.

Listeners (ports in `Broker.ports`):
  tls     TLS with the test server certificate; username and password
  mtls    TLS that requires a client certificate signed by the test CA; the certificate's
          common name is the username (mutual TLS, as AWS IoT Core does it)
  plain   plain TCP, no password (a broker on the bench: it would cross in clear); the ACL
          names a device by its client id
  rogue   TLS with a certificate from a CA nobody trusts

Users: `cloud` may use every topic; a device (its username is its device id) may publish under
`<prefix>/<id>/` and read `<prefix>/<id>/cmd/#` only.

CLI: python3 tools/broker.py [--dir DIR]   (prints its ports and users as JSON; Ctrl-C stops)
"""

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from certs import ensure_certs  # noqa: E402

REPO = HERE.parent
LISTENERS = ("tls", "mtls", "plain", "rogue")
CLOUD_USER = "cloud"
DEVICE_ID = "dash-dev-1"  # the test client certificate's common name too


def mosquitto_bin():
    """The mosquitto binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path="/usr/sbin:/usr/local/sbin"
    )
    if not found:
        raise RuntimeError("mosquitto is not installed: `make test` installs Debian's package")
    return found


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    """One mosquitto process. `users`: username -> password (the cloud's and devices')."""

    def __init__(self, workdir=None, users=None, prefix="dash", certs=None):
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dash-broker-")
            workdir = self._tmp.name
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = certs or ensure_certs(str(REPO / "build" / "certs"))
        self.prefix = prefix
        self.users = dict(users or {CLOUD_USER: "cloud-pw", DEVICE_ID: "device-pw"})
        self.ports = {}
        self.proc = None
        self.log = self.dir / "mosquitto.log"

    def _write_config(self):
        pw = self.dir / "passwd"
        pw.write_text("")
        pw.chmod(0o600)
        for user, password in self.users.items():
            subprocess.run(
                [shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b"]
                + [str(pw), user, password],
                check=True,
                capture_output=True,
            )
        acl = self.dir / "acl"
        acl.write_text(
            "user %s\ntopic readwrite #\n\n"
            "pattern write %s/%%u/#\npattern read %s/%%u/cmd/#\n"
            % (CLOUD_USER, self.prefix, self.prefix)
        )
        acl.chmod(0o600)
        anon = self.dir / "acl-anonymous"
        anon.write_text(
            "pattern write %s/%%c/#\npattern read %s/%%c/cmd/#\n" % (self.prefix, self.prefix)
        )
        anon.chmod(0o600)
        c = self.certs
        lines = [
            # Run as root, mosquitto would switch to user `mosquitto`, who cannot read our files.
            "user %s" % pwd.getpwuid(os.getuid()).pw_name,
            "per_listener_settings true",
            "persistence false",
            "log_dest file %s" % self.log,
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "max_keepalive 1200",
        ]
        for name in LISTENERS:
            lines.append("")
            lines.append("listener %d 127.0.0.1" % self.ports[name])
            if name == "plain":
                # A bench broker: no password (it would cross in clear), the client id as the
                # device's name in the ACL.
                lines += ["allow_anonymous true", "acl_file %s" % anon]
                continue
            leaf = "rogue" if name == "rogue" else "server"
            lines += [
                "cafile %s" % c["ca"],
                "certfile %s" % c[leaf],
                "keyfile %s" % c[leaf + "_key"],
                "allow_anonymous false",
                "acl_file %s" % acl,
            ]
            if name == "mtls":
                lines += ["require_certificate true", "use_identity_as_username true"]
            else:
                lines.append("password_file %s" % pw)
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, deadline_s=15):
        """Start on the same ports as before (new ones the first time); return self once every
        listener accepts connections."""
        for _ in range(5):
            if not self.ports:
                self.ports = dict(zip(LISTENERS, _free_ports(len(LISTENERS)), strict=True))
            conf = self._write_config()
            self.proc = subprocess.Popen(
                [mosquitto_bin(), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            end = time.monotonic() + deadline_s
            while time.monotonic() < end and self.proc.poll() is None:
                if all(_listening(p) for p in self.ports.values()):
                    return self
                time.sleep(0.02)
            self.stop()
            self.ports = {}  # a port was taken meanwhile: try new ones
        raise RuntimeError("mosquitto did not start:\n" + self.log_text())

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def close(self):
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, user=CLOUD_USER, client_id=None, listener="tls"):
        """A connected paho-mqtt client (started loop) as `user`, over TLS with the test CA."""
        import paho.mqtt.client as mqtt

        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or "%s-%d" % (user, os.getpid()),
            protocol=mqtt.MQTTv311,
        )
        c.username_pw_set(user, self.users[user])
        if listener != "plain":
            c.tls_set(ca_certs=self.certs["ca"])
        c.connect("localhost", self.ports[listener], keepalive=30)
        c.loop_start()
        return c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="working directory (default: a temporary one)")
    args = ap.parse_args(argv)
    b = Broker(args.dir).start()
    print(json.dumps({"ports": b.ports, "users": b.users, "ca": b.certs["ca"]}), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        b.close()


if __name__ == "__main__":
    main()
