"""The custom firmware a maker builds for the smallest heap, `dash` frozen in: the unix port built
32-bit (an ESP32's object sizes) from the MicroPython tree MPY_DIR names, with
firmware/manifest_unix.py (tools/mpybuild.py, variant unix32-frozen), places an order against
the emulator. Runs only where MPY_DIR is set; the first run builds the port (about a minute),
later ones only when the tree or lib/dash changed."""

import os
import subprocess

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("MPY_DIR"), reason="MPY_DIR is not set: no MicroPython tree to build from"
)

LOW = 100


@pytest.fixture(scope="module")
def frozen32():
    import mpybuild

    try:
        return mpybuild.build("unix32-frozen")
    except mpybuild.BuildError as e:
        pytest.fail(str(e))


def test_the_build_is_32_bit_with_dash_frozen_in(frozen32, tmp_path):
    # From an empty directory, with nothing but the firmware image on the path.
    out = subprocess.run(
        [str(frozen32), "-c", "import sys, dash.app, umqtt.simple; print(sys.maxsize)"],
        cwd=tmp_path,
        env=dict(os.environ, MICROPYPATH=".frozen"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["2147483647"]  # 4-byte words, as on an ESP32


def test_frozen_32_bit_build_places_an_order(frozen32, make_device, emulator):
    # The device's path is tools/ (vdevice.py), .frozen and micropython-lib: no lib/, so the
    # firmware that runs is the frozen one.
    dev = make_device(lib=".frozen", micropython=frozen32)
    dev.set_level(LOW)
    dev.start()
    assert dev.boot_ok
    st = dev.run(15 * 60)
    assert st["state"] == "ordered" and st["orders_placed"] == 1
    assert len(emulator.requests_to("/replenish/")) == 1 and len(emulator.orders) == 1
    assert dev.state_record()["ev"] == emulator.orders[0]["event_instance_id"]
