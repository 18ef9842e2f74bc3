"""The bench tool as a newcomer uses it (issue 19), against the board emulator and the DRS
emulator through the real `mpremote`: no command leaves the appliance stopped without saying
so, `status` tells the truth about the running firmware, nothing ends in a traceback."""

import json
import re
import signal
import subprocess
import sys

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, REPO
from test_bench_workflow import dashctl, provision_files, wait_for

DASHCTL = [sys.executable, str(REPO / "tools" / "dashctl.py")]


def registered_board(board, emulator, certs, tmp_path, **extra):
    dashctl(board, "deploy")
    cfg, sec = provision_files(tmp_path, emulator, **extra)
    sec.write_text(
        json.dumps(
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": emulator.add_refresh_token(),
            }
        )
    )
    dashctl(board, "provision", "--config", str(cfg), "--secrets", str(sec), "--ca", certs["ca"])


def test_status_tells_the_running_firmware_and_leaves_it_running(
    board,
    emulator,
    certs,
    tmp_path,
):
    registered_board(board, emulator, certs, tmp_path)
    (board.flash / "level.txt").write_text("500\n")
    dashctl(board, "restart")
    wait_for(lambda: b"state" in board.output(), 30, "the firmware's first state")
    mark = board.mark()
    p = dashctl(board, "status", "--json")
    st = json.loads(p.stdout)
    assert st["firmware"] == "running" and st["level"] == 500  # live: it has sampled
    assert st["registered"] is True and st["handshakes"] >= 1  # its own counters
    assert "firmware restarted" in p.stderr
    # It runs again, from boot, and `log` finds it running, not at the REPL.
    board.wait_for(re.compile(rb"\] boot \{"), 30, start=mark)
    log = dashctl(board, "log", "--seconds", "2").stdout
    assert "stopped" not in log, log


def test_status_shows_the_config_errors_themselves(board, emulator, certs, tmp_path):
    registered_board(board, emulator, certs, tmp_path)
    cfg = json.loads((board.flash / "config.json").read_text())
    cfg["low"] = 900  # above high
    (board.flash / "config.json").write_text(json.dumps(cfg))
    dashctl(board, "restart")
    out = dashctl(board, "status").stdout
    assert "config error: config.json: 'low' must be below 'high'" in out, out


def test_a_test_order_is_refused_over_an_open_order(board, emulator, certs, tmp_path):
    emulator.is_test_device = True
    registered_board(board, emulator, certs, tmp_path, test_device=True)
    (board.flash / "level.txt").write_text("100\n")
    dashctl(board, "restart")
    wait_for(lambda: emulator.orders, 60, "the board's own order")
    refused = dashctl(board, "test-order", "slot-a", ok=False)
    assert refused.returncode == 1 and "has an order open" in refused.stdout
    assert len(emulator.orders) == 1


def test_ordinary_use_never_ends_in_a_traceback(board, emulator, certs, tmp_path):
    dashctl(board, "deploy")
    cfg, sec = provision_files(tmp_path, emulator)
    # A DER trust store, as Amazon serves its roots (.cer): taken, and written as PEM.
    der = certs["ca_der"]
    dashctl(board, "provision", "--config", str(cfg), "--secrets", str(sec), "--ca", der)
    assert (board.flash / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert dashctl(board, "status").returncode == 0
    # `challenge` on a broken config, `register` without a code: said, no traceback.
    (board.flash / "config.json").write_text("{not json")
    dashctl(board, "restart")  # the firmware boots into it, and idles
    p = dashctl(board, "challenge", ok=False)
    assert p.returncode == 1 and "no challenge" in p.stdout and "Traceback" not in p.stderr
    p = dashctl(board, "register", ok=False, stdin="")
    assert p.returncode == 1 and "Traceback" not in p.stderr + p.stdout
    # --help names every command, one line each; each command has its own --help.
    helps = subprocess.run([*DASHCTL, "--help"], capture_output=True, text=True).stdout
    commands = ["deploy", "provision", "challenge", "register", "deregister", "status", "log"]
    commands += ["relay", "rtc", "test-order", "calibrate", "restart", "factory-reset"]
    for c in commands:
        assert any(line.split()[:1] == [c] for line in helps.splitlines()), c
        sub = subprocess.run([*DASHCTL, c, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage" in sub.stdout, c


def test_log_follows_until_ctrl_c_and_says_when_the_firmware_is_stopped(
    board,
    emulator,
    certs,
    tmp_path,
):
    registered_board(board, emulator, certs, tmp_path)
    dashctl(board, "restart")
    follow = subprocess.Popen(
        [*DASHCTL, "-p", board.port, "log", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = follow.stdout.readline()  # it follows: lines come as the firmware logs them
        assert line.strip(), line
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0 and "Traceback" not in err
    # Stopped at the REPL (factory reset leaves it so): `log` says why it shows nothing.
    dashctl(board, "factory-reset", "--yes")
    p = dashctl(board, "log", "--seconds", "2", ok=False)
    assert "the firmware is stopped" in p.stdout, p.stdout


def test_calibrate_prints_the_raw_counts_live_and_restarts_the_firmware(
    board,
    emulator,
    certs,
    tmp_path,
):
    registered_board(board, emulator, certs, tmp_path)
    (board.flash / "level.txt").write_text("432\n")
    dashctl(board, "restart")
    p = dashctl(board, "calibrate", "--seconds", "2")
    lines = p.stdout.splitlines()
    readings = [ln for ln in lines if "slot slot-a: raw 432, level 432" in ln]
    assert len(readings) >= 3, p.stdout  # one every half second, with the calibrated level
    assert "slot slot-a: %d readings, raw 432 to 432, median 432" % len(readings) in p.stdout
    assert "firmware restarted" in p.stderr and "Traceback" not in p.stdout + p.stderr
    # The sensor's file is read afresh each time: what the board's sensor sees, live.
    (board.flash / "level.txt").write_text("garbage")
    p = dashctl(board, "calibrate", "--seconds", "1", "--slot", "slot-a", "--json", ok=False)
    first = json.loads(p.stdout.splitlines()[0])
    assert first["slot"] == "slot-a" and first["raw"] is None and first["fault"] == "unreadable"
    assert p.returncode == 1  # nothing read


def test_deregister_and_relay_are_commands(board, emulator, certs, tmp_path):
    registered_board(board, emulator, certs, tmp_path)
    relayed = {
        "notificationInfo": {
            "notificationType": "SubscriptionChangedNotification",
            "notificationId": "n-1",
        }
    }
    out = dashctl(board, "relay", json.dumps(relayed)).stdout
    assert out.startswith("taken:")
    out = dashctl(board, "deregister").stdout
    assert out.strip() == "deregistered" and emulator.deregistrations == 1
    assert "registered: no" in dashctl(board, "status").stdout


@pytest.mark.parametrize(
    "port,path",
    [("u0", "/dev/ttyUSB0"), ("a1", "/dev/ttyACM1"), ("port:/dev/ttyS3", "/dev/ttyS3")],
)
def test_log_takes_every_port_form_mpremote_does(port, path):
    sys.path.insert(0, str(REPO / "tools"))
    import dashctl as tool

    assert tool.serial_path(port) == path


def test_deploy_warns_of_a_firmware_with_dash_frozen_in(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    import dashctl as tool

    class Frozen:
        timeout = 60

        def exec_json(self, code, live=False):
            mpy = tool._mpy_cross_version()
            return {"mpy": mpy, "files": {}, "rom": False, "frozen": True}

        def mpremote(self, *args, **kw):
            return ""

    said = tool.deploy(Frozen(), False)
    assert any(s.startswith("WARNING: this firmware has dash frozen in") for s in said)


def test_three_resets_nobody_marked_mean_safe_mode_and_dashctl_restart_ends_it(
    board, emulator, certs, tmp_path
):
    # The ESP32 port reports a bare machine.reset() as it reports a panic: three in a row, as
    # a crash loop would make them, and the firmware starts in safe mode, the REPL free.
    registered_board(board, emulator, certs, tmp_path)
    for _ in range(3):
        mark = board.mark()
        subprocess.run(
            [sys.executable, "-m", "mpremote", "connect", board.port, "reset"],
            capture_output=True,
            timeout=60,
        )
        board.wait_for(re.compile(rb"dash: (firmware|SAFE)"), 30, start=mark)
    assert b"SAFE MODE (3 unclean restarts in a row" in board.output(mark)
    assert "the firmware is stopped" in dashctl(board, "log", "--seconds", "2", ok=False).stdout
    # A reset a person asks for (dashctl's) is no crash: the firmware starts again.
    p = dashctl(board, "restart")
    assert "the firmware started" in p.stdout and "did NOT start" not in p.stderr
    st = json.loads(dashctl(board, "status", "--json").stdout)
    assert st["firmware"] == "running" and st["registered"] is True, board.output().decode(
        errors="replace"
    )[-8000:]
