"""The README's bring-up, walked as a newcomer walks it (issue 19): its commands are taken from
the README itself, so the two cannot drift, and run one by one in a copy of the checkout
against `make board` and `make emulator`; after each, the firmware must be running."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from conftest import REPO

README = REPO / "README.md"


def block(name):
    """The lines of the shell block after `<!-- walk: NAME -->`, comments stripped."""
    text = README.read_text()
    m = re.search(r"<!-- walk: %s -->\s*```sh\n(.*?)```" % name, text, re.S)
    assert m, "the README has no walk block %r" % name
    lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in m.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def checkout(tmp_path):
    """A copy of the checkout as a newcomer has it, sharing the venv and the built parts; its
    examples point at this test's emulator port (the README's is 8443)."""
    port = free_port()
    work = tmp_path / "repo"
    work.mkdir()
    for name in (
        "Makefile",
        "lib",
        "tools",
        "boot.py",
        "main.py",
        "requirements.txt",
        "requirements-stubs.txt",
        "package.json",
        "firmware",
        ".venv",
    ):
        if (REPO / name).exists():
            (work / name).symlink_to(REPO / name)
    (work / "build").mkdir()
    for name in ("certs", "mplib"):
        (work / "build" / name).symlink_to(REPO / "build" / name)
    shutil.copytree(REPO / "examples", work / "examples")
    for f in (work / "examples").iterdir():
        f.write_text(f.read_text().replace("localhost:8443", "localhost:%d" % port))
    return work, port


def run_in(work, env, command, timeout=240):
    return subprocess.run(
        ["bash", "-c", command],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_readme_bring_up_leaves_the_firmware_running(checkout):
    work, port = checkout
    env = dict(os.environ, EMU_PORT=str(port), BOARDEMU_LOG=str(work / "board.log"))
    background = block("background")
    steps = block("steps")
    assert any("make board" in c for c in background) and any("emulator" in c for c in background)
    procs = [
        subprocess.Popen(
            ["bash", "-c", c],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for c in background
    ]
    try:
        end = time.monotonic() + 60
        while not (work / "build/board/tty").exists() or not _listening(port):
            assert time.monotonic() < end, "make board / make emulator did not come up"
            assert all(p.poll() is None for p in procs), "a background command ended"
            time.sleep(0.2)
        # Assignments (P=...) hold for the rest, as in the newcomer's shell.
        prelude = "".join(c + "\n" for c in steps if re.fullmatch(r"\w+=.*", c))
        outputs = []
        for command in steps:
            if command in prelude:
                continue
            p = run_in(work, env, "set -e\n" + prelude + command)
            assert p.returncode == 0, (command, p.stdout, p.stderr)
            assert "Traceback" not in p.stdout + p.stderr, (command, p.stderr)
            outputs.append(p.stdout)
            if "$P" in command:
                probe = run_in(work, env, prelude + "$P log --seconds 1")
                assert "the firmware is stopped" not in probe.stdout, (command, probe.stdout)
                assert "did NOT start" not in p.stderr, (command, p.stderr)
        assert any("registered: no" in o for o in outputs)
        assert any("registered: yes" in o for o in outputs)
        assert any("TEST_ORDER_PLACED" in o for o in outputs)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
