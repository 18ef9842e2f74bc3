"""What a maker installs from: package.json for `mpremote mip install`, the freeze manifest for
a custom ESP32 build, and the host-side config check of `dashctl provision`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_package_json_installs_every_device_module():
    pkg = json.loads((REPO / "package.json").read_text())
    shipped = sorted(p.name for p in (REPO / "lib" / "dash").glob("*.py"))
    assert sorted(Path(t).name for t, _ in pkg["urls"]) == shipped
    for target, url in pkg["urls"]:
        assert target == "dash/" + Path(url).name  # mip puts them in /lib/dash
        assert (REPO / url).is_file()  # relative URLs resolve next to package.json
    assert pkg["version"]


def test_freeze_manifest_names_the_package_where_it_is():
    calls = []

    def package(name, base_path="."):
        calls.append(("package", name, base_path))

    def include(path):
        calls.append(("include", path))

    manifest = REPO / "firmware" / "manifest.py"
    exec(
        compile(manifest.read_text(), str(manifest), "exec"),
        {"package": package, "include": include},
    )
    assert ("include", "$(PORT_DIR)/boards/manifest.py") in calls
    ((_, name, base),) = [c for c in calls if c[0] == "package"]
    assert name == "dash" and (manifest.parent / base / name / "app.py").is_file()


def dashctl(*args, **kw):
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "dashctl.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def test_provision_checks_on_the_host_and_writes_nothing_when_wrong(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"slot_id": "../x", "low": 900, "high": 100, "sensor": {}}))
    sec = tmp_path / "secrets.json"
    sec.write_text(json.dumps({"client_id": "c", "client_secret": "TOP SECRET"}))
    # A port that does not exist: any attempt to write would fail differently.
    p = dashctl(
        "-p",
        str(tmp_path / "no-such-tty"),
        "provision",
        "--config",
        str(cfg),
        "--secrets",
        str(sec),
    )
    assert p.returncode == 1
    assert "nothing written" in p.stderr
    for key in ("'slot_id'", "'low' must be below 'high'", "'sensor.kind'", "'client_secret'"):
        assert key in p.stderr, key
    assert "TOP SECRET" not in p.stdout + p.stderr


@pytest.mark.parametrize(
    "profile", sorted((REPO / "firmware" / "boards").glob("*.json")), ids=lambda p: p.name
)
def test_every_board_profile_passes_the_firmwares_own_checks(profile):
    sys.path.insert(0, str(REPO / "tools"))
    import dashctl

    config = dashctl.load_config_rules()
    secrets = {"client_id": "amzn1.application-oa2-client.x"}
    cfg, _, errors = config.validate(json.loads(profile.read_text()), secrets)
    assert errors == [], errors
    assert cfg["slots"][0]["sensor"]["kind"] in ("adc", "hx711", "pulse")  # a board's
