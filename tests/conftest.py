"""Fixtures: test certificates generated at run time, a fresh DRS/LwA emulator per test, and
devices (the real firmware under the real `micropython`) wired to it."""

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from certs import ensure_certs  # noqa: E402
from devicectl import Device  # noqa: E402
from drs_emulator import Emulator  # noqa: E402

# tests/unit run inside MicroPython (see test_unit_mpy.py), not under CPython.
collect_ignore = ["unit"]

CLIENT_ID = "amzn1.application-oa2-client.test"
CLIENT_SECRET = "test-secret"


@pytest.fixture(scope="session")
def certs():
    return ensure_certs(str(REPO / "build" / "certs"))


@pytest.fixture
def emulator(certs):
    emu = Emulator(
        str(REPO / "build" / "certs"), client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    ).start()
    yield emu
    emu.stop()


@pytest.fixture
def make_device(tmp_path, emulator, certs):
    devices = []

    def make(port=None, config=None, refresh_token=None, ca=None, **kw):
        dev = Device(
            tmp_path / ("dev%d" % len(devices)),
            ca or certs["ca"],
            port or emulator.port,
            refresh_token or emulator.add_refresh_token(),
            CLIENT_ID,
            kw.pop("client_secret", CLIENT_SECRET),
            config=config,
            **kw,
        )
        devices.append(dev)
        return dev

    yield make
    for d in devices:
        d.stop()


@pytest.fixture
def device(make_device):
    return make_device().start()


@contextmanager
def slots_device(certs, root, slots, config):
    """An emulator knowing `slots` and a (not yet started) device configured for them."""
    with Emulator(
        str(REPO / "build" / "certs"),
        slots=slots,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    ) as emu:
        dev = Device(
            root,
            certs["ca"],
            emu.port,
            emu.add_refresh_token(),
            CLIENT_ID,
            CLIENT_SECRET,
            config=config,
        )
        try:
            yield emu, dev
        finally:
            dev.stop()


@pytest.fixture
def broker(certs, tmp_path):
    from broker import Broker

    b = Broker(tmp_path / "broker", certs=certs).start()
    yield b
    b.close()


@pytest.fixture
def cloud(broker):
    from cloud import Cloud

    c = Cloud(broker)
    yield c
    c.close()


@pytest.fixture
def board(tmp_path):
    """A board without hardware (tools/boardemu.py): the unix port on a pseudo-terminal, with
    a directory as its flash (`board.flash`), for the real `mpremote` and `dashctl`."""
    boardemu = pytest.importorskip("boardemu")
    flash = tmp_path / "flash"
    flash.mkdir()
    with boardemu.Board(str(flash)) as b:
        b.flash = flash
        yield b
