"""The maker's whole bench workflow through the real `mpremote`, against the board emulator
(the real unix port on a pseudo-terminal, a directory as its flash) and the DRS emulator:
deploy both ways, provision, register, the board ordering on its own, inspect, factory reset."""

import json
import subprocess
import sys
import time

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, REPO

boardemu = pytest.importorskip("boardemu")

REDIRECT = "https://maker.example/dash/callback"


def wait_for(cond, seconds=60, what="condition"):
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, what + " not reached"
        time.sleep(0.1)


def dashctl(board, *args, ok=True, stdin=None):
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "dashctl.py"),
            "-p",
            board.port,
            "--timeout",
            "60",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def provision_files(tmp_path, emulator, **extra):
    cfg = {
        "slot_id": "slot-a",
        "low": 200,
        "high": 800,
        "confirm_samples": 1,
        "warmup_samples": 1,
        "sample_s": 1,
        "drs_url": "https://localhost:%d" % emulator.port,
        "lwa_url": "https://localhost:%d/auth/o2/token" % emulator.port,
        "redirect_uri": REDIRECT,
        "http_timeout_s": 5,
        "sensor": {"kind": "file", "raw_empty": 0, "raw_full": 1000, "capacity": 1000},
        **extra,
    }
    c = tmp_path / "my-config.json"
    c.write_text(json.dumps(cfg))
    s = tmp_path / "my-secrets.json"
    s.write_text(json.dumps({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}))
    return c, s


def test_the_whole_bench_workflow(board, emulator, certs, tmp_path):
    first = dashctl(board, "deploy").stdout
    assert "copied lib/dash/app.mpy" in first and "copied main.py" in first
    assert (board.flash / "lib" / "dash" / "app.mpy").is_file()
    again = dashctl(board, "deploy").stdout
    assert "copied" not in again and "unchanged" in again  # idempotent

    cfg, sec = provision_files(tmp_path, emulator)
    out = dashctl(
        board, "provision", "--config", str(cfg), "--secrets", str(sec), "--ca", certs["ca"]
    ).stdout
    assert "wrote secrets.json" in out and CLIENT_SECRET not in out
    assert json.loads((board.flash / "secrets.json").read_text())["client_id"] == CLIENT_ID

    assert "registered: no" in dashctl(board, "status").stdout
    code = emulator.issue_auth_code(redirect_uri=REDIRECT)
    assert "registered" == dashctl(board, "register", code).stdout.strip()
    st = json.loads(dashctl(board, "status", "--json").stdout)
    assert st["registered"] is True and st["token_expires_s"] > 3000
    assert "Atzr|" not in json.dumps(st)

    # The board on its own: main.py starts at reset, the level is low, it orders.
    (board.flash / "level.txt").write_text("100\n")
    dashctl(board, "restart")
    wait_for(lambda: emulator.orders, 60, "an order from the board")
    st = json.loads(dashctl(board, "status", "--json").stdout)
    assert st["state"] == "ordered"
    assert st["event_instance_id"] == emulator.orders[0]["event_instance_id"]

    log = dashctl(board, "log", "--seconds", "4", "--restart").stdout
    assert "boot" in log and '"state": "ordered"' in log

    gone = dashctl(board, "factory-reset", "--yes").stdout
    assert "secrets.json" in gone and "tokens.json" in gone and "state.json" in gone
    assert not (board.flash / "secrets.json").exists()
    assert (board.flash / "config.json").exists()
    assert "registered: no" in dashctl(board, "status").stdout


def app_file(board):
    """Where the board imports the firmware from."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mpremote",
            "connect",
            board.port,
            "exec",
            "import dash.app; print(dash.app.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def test_deploy_as_romfs_runs_from_rom(board, emulator, certs, tmp_path):
    dashctl(board, "deploy")
    out = dashctl(board, "deploy", "--romfs").stdout
    assert "ROMFS image deployed" in out and "removed lib/dash/app.mpy" in out
    assert not (board.flash / "lib" / "dash" / "app.mpy").exists()
    assert "ROMFS image unchanged" in dashctl(board, "deploy", "--romfs").stdout
    cfg, sec = provision_files(tmp_path, emulator)
    dashctl(board, "provision", "--config", str(cfg), "--secrets", str(sec), "--ca", certs["ca"])
    dashctl(board, "restart")
    st = json.loads(dashctl(board, "status", "--json").stdout)
    assert st["registered"] is False and st["state"] in ("warmup", "monitor")
    where = app_file(board)
    assert where.strip().startswith("/rom/")
    # Back to .mpy files: the image must go, or it would keep shadowing them.
    back = dashctl(board, "deploy").stdout
    assert "removed the ROMFS image" in back and "copied lib/dash/app.mpy" in back
    where = app_file(board)
    assert where.strip().startswith("lib/") or where.strip().startswith("/lib/")
    # And the ROMFS marker follows what the partition holds, not what was sent last time.
    assert "ROMFS image deployed" in dashctl(board, "deploy", "--romfs").stdout


def test_a_test_order_needs_a_test_registration(board, emulator, certs, tmp_path):
    emulator.is_test_device = True
    dashctl(board, "deploy")
    cfg, sec = provision_files(tmp_path, emulator)
    dashctl(board, "provision", "--config", str(cfg), "--secrets", str(sec), "--ca", certs["ca"])
    dashctl(board, "register", emulator.issue_auth_code(redirect_uri=REDIRECT))
    refused = dashctl(board, "test-order", "slot-a", ok=False)
    assert refused.returncode == 1 and "test_device" in refused.stdout
    cfg, sec = provision_files(tmp_path, emulator, test_device=True)
    dashctl(board, "provision", "--config", str(cfg), "--secrets", str(sec))
    out = dashctl(board, "test-order", "slot-a").stdout
    assert "TEST_ORDER_PLACED" in out and emulator.orders[0]["detail_code"] == "TEST_ORDER_PLACED"


def test_rtc_and_bad_provisioning(board, tmp_path):
    dashctl(board, "deploy")
    dashctl(board, "rtc")
    bad = tmp_path / "bad.json"
    bad.write_text('{"slot_id": "a b"}')
    sec = tmp_path / "s.json"
    sec.write_text('{"client_id": "x"}')
    p = dashctl(board, "provision", "--config", str(bad), "--secrets", str(sec), ok=False)
    assert p.returncode == 1 and "nothing written" in p.stderr
    assert not (board.flash / "config.json").exists()


def test_mip_installs_the_package(board):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpremote",
            "connect",
            board.port,
            "mip",
            "install",
            "./package.json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    shipped = sorted(f.name for f in (REPO / "lib" / "dash").glob("*.py"))
    assert sorted(f.name for f in (board.flash / "lib" / "dash").glob("*.py")) == shipped


def test_provision_asks_for_the_secrets(board, emulator, certs, tmp_path):
    dashctl(board, "deploy")
    cfg, _ = provision_files(tmp_path, emulator)
    p = dashctl(
        board,
        "provision",
        "--config",
        str(cfg),
        stdin="%s\n%s\nhome-net\nwifi-pass\n" % (CLIENT_ID, CLIENT_SECRET),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    sec = json.loads((board.flash / "secrets.json").read_text())
    assert sec == {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "wifi_ssid": "home-net",
        "wifi_password": "wifi-pass",
    }
    assert CLIENT_SECRET not in p.stdout and "wifi-pass" not in p.stdout


def test_a_board_with_the_cloud_link_over_mutual_tls(board, emulator, certs, tmp_path, cloud):
    # As on a stock ESP32, umqtt.simple is there without being deployed (the board emulator
    # has it "frozen"); the link's files go on with `provision --file`.
    from cloud import DEVICE_ID

    dashctl(board, "deploy")
    mqtt = {
        "host": "localhost",
        "port": cloud.broker.ports["mtls"],
        "device_id": DEVICE_ID,
        "client_cert": "client.pem",
        "client_key": "client.key",
        "timeout_s": 2,
    }
    cfg, sec = provision_files(tmp_path, emulator, mqtt=mqtt)
    sec.write_text(
        json.dumps(
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": emulator.add_refresh_token(),
            }
        )
    )
    out = dashctl(
        board,
        "provision",
        *("--config", str(cfg), "--secrets", str(sec), "--ca", certs["ca"]),
        *(
            "--file",
            certs["client"] + ":client.pem",
            "--file",
            certs["client_key"] + ":client.key",
        ),
    ).stdout
    assert "wrote client.pem" in out and "wrote client.key" in out
    assert (board.flash / "client.key").read_bytes() == open(certs["client_key"], "rb").read()
    (board.flash / "level.txt").write_text("100\n")
    dashctl(board, "restart")
    cloud.wait(lambda: cloud.events("order-placed"), 60)
    assert (
        cloud.events("order-placed")[0]["f"]["event_instance_id"]
        == (emulator.orders[0]["event_instance_id"])
    )
    cloud.wait(lambda: (cloud.state() or {}).get("state") == "ordered", 60)
    assert b"BEGIN" not in cloud.text()  # the key never leaves the board
