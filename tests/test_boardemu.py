"""The board emulator (tools/boardemu.py) driven by the real mpremote, as the bench workflow is.

Every test runs the real `mpremote` as a subprocess with a timeout against a real `micropython`
behind a pseudo-terminal, and waits for conditions with deadlines (never sleep-and-hope)."""

import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from boardemu import STALE_S, Board  # noqa: E402

_BIN = Path(sys.executable).parent / "mpremote"
MPREMOTE = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "mpremote"]
TIMEOUT = 30


def mpr(port, *args, check=True, timeout=TIMEOUT):
    """Runs `mpremote connect PORT ARGS...`; returns its stdout (CRLF as LF)."""
    r = subprocess.run(
        [*MPREMOTE, "connect", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = r.stdout.replace("\r\n", "\n")
    if check:
        assert r.returncode == 0, "mpremote %s failed:\n%s%s" % (args, out, r.stderr)
    return out


def until(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


@pytest.fixture
def flash(tmp_path):
    d = tmp_path / "flash"
    d.mkdir()
    return d


@pytest.fixture
def board(flash):
    with Board(flash) as b:
        b.wait_for(">>> ")
        yield b


def test_exec_eval_run(board, tmp_path):
    assert mpr(board.port, "exec", "print(1)") == "1\n"
    assert mpr(board.port, "eval", "1+2") == "3\n"
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('ran', __name__, sys.path)\n")
    out = mpr(board.port, "run", str(script))
    assert out == "ran __main__ ['', '.frozen', '/lib']\n"
    assert mpr(board.port, "eval", "__import__('asyncio').__name__") == "asyncio\n"  # frozen
    # An error is reported as on a board, and mpremote fails.
    r = subprocess.run(
        [*MPREMOTE, "connect", board.port, "exec", "1/0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 1
    assert 'File "<stdin>", line 1, in <module>' in r.stdout
    assert "ZeroDivisionError" in r.stdout
    assert "board_repl" not in r.stdout


def test_fs_commands_use_the_flash_dir(board, flash, tmp_path):
    data = bytes(range(256)) * 20  # every byte value, CR, LF and Ctrl-C included
    blob = tmp_path / "app.mpy"
    blob.write_bytes(data)
    text = tmp_path / "top.py"
    text.write_text("X = 1\nY = 2\n")
    back = tmp_path / "back.mpy"
    out = mpr(
        board.port,
        *("fs", "mkdir", ":lib", "+", "fs", "mkdir", ":/lib/dash", "+"),
        *("fs", "cp", str(blob), ":lib/dash/app.mpy", "+"),
        *("fs", "cp", str(text), ":/lib/top.py", "+"),
        *("fs", "ls", ":lib/dash", "+", "fs", "sha256sum", ":/lib/dash/app.mpy", "+"),
        *("fs", "cat", ":lib/top.py", "+"),
        *("fs", "cp", ":/lib/dash/app.mpy", str(back)),
    )
    assert (flash / "lib" / "dash" / "app.mpy").read_bytes() == data
    assert (flash / "lib" / "top.py").read_text() == "X = 1\nY = 2\n"
    assert back.read_bytes() == data
    assert "        5120 app.mpy\n" in out  # sizes, as littlefs lists them
    assert hashlib.sha256(data).hexdigest() in out
    assert "X = 1\nY = 2\n" in out
    out = mpr(board.port, "fs", "rm", ":lib/top.py", "+", "fs", "ls", ":/lib")
    assert not (flash / "lib" / "top.py").exists()
    assert out.endswith("ls :/lib\n           0 dash/\n")
    mpr(board.port, "fs", "rm", "-r", ":lib")
    assert not (flash / "lib").exists()
    out = mpr(board.port, "fs", "ls", ":")
    assert out == "ls :\n"


def test_mount_passes_binary_data_unchanged(board, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    data = bytes(range(256)) * 8
    (host / "blob.bin").write_bytes(data)
    (host / "hostmod.py").write_text("print('imported from the host')\n")
    code = (
        "import hashlib, hostmod\n"
        "print(hashlib.sha256(open('blob.bin', 'rb').read()).digest().hex())\n"
        "open('out.bin', 'wb').write(bytes(range(256)))"
    )
    out = mpr(board.port, "mount", str(host), "exec", code)
    assert "imported from the host\n" + hashlib.sha256(data).hexdigest() + "\n" in out
    assert (host / "out.bin").read_bytes() == bytes(range(256))


def test_raw_paste_of_a_large_script(board, tmp_path):
    body = "".join("v%d = %d\n" % (i, i * i) for i in range(2000))
    script = tmp_path / "big.py"
    script.write_text(body + "print(v1999, v0)\n")
    assert mpr(board.port, "run", str(script)) == "3996001 0\n"


def test_boot_py_always_main_py_only_from_the_friendly_repl(flash):
    (flash / "boot.py").write_text("open('boot.log', 'a').write('b')\nprint('boot ran')\n")
    (flash / "main.py").write_text("open('main.log', 'a').write('m')\nprint('main ran')\n")
    with Board(flash) as board:
        # Power-on: boot.py, main.py, then the friendly REPL's banner.
        at = board.wait_for("main ran")
        board.wait_for('Type "help()" for more information.\r\n>>> ', start=at)
        assert board.output().index(b"boot ran") < board.output().index(b"main ran")
        assert (flash / "boot.log").read_text() == "b"
        assert (flash / "main.log").read_text() == "m"
        # mpremote soft-resets from the raw REPL: boot.py runs, main.py does not.
        mark = board.mark()
        assert mpr(board.port, "exec", "print('hi')") == "hi\n"
        board.wait_for("MPY: soft reboot\r\nboot ran\r\nraw REPL; CTRL-B to exit\r\n", start=mark)
        assert (flash / "boot.log").read_text() == "bb"
        assert (flash / "main.log").read_text() == "m"
        mpr(board.port, "soft-reset")
        assert (flash / "boot.log").read_text() == "bbb"
        assert (flash / "main.log").read_text() == "m"
        # `mpremote reset` soft-resets first (no `resume`), then machine.reset() hard-resets,
        # and a hard reset starts in the friendly REPL: both run.
        mark = board.mark()
        mpr(board.port, "reset")
        board.wait_for(">>> ", start=board.wait_for("main ran", start=mark))
        assert (flash / "boot.log").read_text() == "bbbbb"
        assert (flash / "main.log").read_text() == "mm"
        # A failing boot.py skips main.py.
        (flash / "boot.py").write_text("print('boot ran')\nraise ValueError('bad boot')\n")
        mark = board.mark()
        mpr(board.port, "reset")
        at = board.wait_for("ValueError: bad boot\r\n", start=mark)
        board.wait_for(">>> ", start=at)
        assert b"main ran" not in board.output(mark)
        assert (flash / "main.log").read_text() == "mm"


def test_ctrl_c_takes_over_a_running_main_py(flash):
    (flash / "main.py").write_text(
        "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n)\n    time.sleep(0.05)\n"
    )
    with Board(flash) as board:
        board.wait_for("tick 3")
        # `resume` interrupts without a soft reset: main.py's globals are still there.
        assert mpr(board.port, "resume", "eval", "n > 2") == "True\n"
        assert b"KeyboardInterrupt" in board.output()
        mark = board.mark()
        mpr(board.port, "reset")
        board.wait_for("tick 3", start=mark)
        assert mpr(board.port, "exec", "print('took over')") == "took over\n"
        assert mpr(board.port, "resume", "eval", "'n' in globals()") == "False\n"


def test_soft_reset_gives_fresh_state_and_keeps_the_port(board):
    port, boots = board.port, board.boots
    mpr(board.port, "resume", "exec", "x = 5")
    assert mpr(board.port, "resume", "eval", "x") == "5\n"
    mpr(board.port, "soft-reset")
    assert mpr(board.port, "resume", "eval", "'x' in globals()") == "False\n"
    assert board.port == port and os.path.exists(port)
    assert board.boots == boots + 1
    # machine.soft_reset() in code run by mpremote resets too.
    mpr(board.port, "resume", "exec", "y = 1\nimport machine\nmachine.soft_reset()")
    assert mpr(board.port, "resume", "eval", "'y' in globals()") == "False\n"


def test_the_port_answers_after_unread_output_was_dropped(board):
    mpr(board.port, "exec", "print(1)")  # the banner after mpremote leaves is never read
    until(lambda: board.dropped > 0, what="unread output to be dropped")
    time.sleep(STALE_S * 1.5)  # the port stays idle: this is the case under test
    assert mpr(board.port, "exec", "print(2)", timeout=15) == "2\n"


def test_reset_is_a_hard_reset_and_keeps_the_port(board):
    port = board.port
    cause = "import machine; print(machine.reset_cause() == machine.%s)"
    assert mpr(port, "exec", cause % "PWRON_RESET") == "True\n"
    mark = board.mark()
    mpr(port, "reset")
    board.wait_for("rst:0xc (SW_CPU_RESET)", start=mark)
    assert os.path.exists(port)
    assert mpr(port, "exec", cause % "HARD_RESET") == "True\n"  # as the ESP32 port says


def test_romfs_deploy_then_import_from_rom(board, flash, tmp_path):
    src = tmp_path / "romsrc"
    (src / "lib" / "pkg").mkdir(parents=True)
    (src / "lib" / "pkg" / "__init__.py").write_text("WHERE = 'rom lib'\n")
    (src / "romtop.py").write_text("def hello():\n    return 'hello from rom'\n")
    out = mpr(board.port, "romfs", "query")
    assert "ROMFS0 partition has size 262144 bytes (64 blocks of 4096 bytes each)" in out
    assert "Not a valid ROMFS" in out
    image = tmp_path / "app.romfs"
    assert "Writing" in mpr(board.port, "romfs", "-o", str(image), "build", str(src))
    out = mpr(board.port, "romfs", "deploy", str(image))
    assert "ROMFS image deployed" in out
    assert (flash / ".romfs").stat().st_size == 262144
    mark = board.mark()
    mpr(board.port, "reset")
    board.wait_for(">>> ", start=board.wait_for("SW_CPU_RESET", start=mark))
    code = (
        "import sys, os, romtop, pkg\n"
        "print(romtop.hello(), romtop.__file__, pkg.WHERE, pkg.__file__)\n"
        "print(sys.path, os.listdir('/'))"
    )
    out = mpr(board.port, "exec", code)
    assert out == (
        "hello from rom /rom/romtop.mpy rom lib /rom/lib/pkg/__init__.mpy\n"
        "['', '.frozen', '/rom', '/rom/lib', '/lib'] ['rom']\n"
    )
    out = mpr(board.port, "romfs", "query")
    assert "ROMFS image size:" in out and "Not a valid" not in out
    # The partition is not a file of the board's filesystem.
    assert ".romfs" not in mpr(board.port, "fs", "ls", ":")


def test_heap_kb_is_the_free_heap_at_boot(flash):
    (flash / "boot.py").write_text("import gc\ngc.collect()\nprint('free', gc.mem_free())\n")
    with Board(flash, heap_kb=64) as board:
        board.wait_for(re.compile(rb"free \d+\r\n"))
        text = board.output()
        free = int(re.search(rb"free (\d+)\r\n", text).group(1))
        assert board.boots == 1, text  # one boot: nothing crashed on the way
        assert 60 * 1024 < free <= 64 * 1024, text
        out = mpr(board.port, "exec", "b = bytearray(50 * 1024)\nprint(len(b))")
        assert out == "51200\n"
        r = subprocess.run(
            [*MPREMOTE, "connect", board.port, "exec", "b = bytearray(80 * 1024)"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert r.returncode == 1 and "MemoryError" in r.stdout


class Terminal:
    """A program on a pseudo-terminal, read with deadlines (like pexpect)."""

    def __init__(self, args):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = b""

    def expect(self, pattern, timeout=10.0):
        pattern = pattern.encode() if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while pattern not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("never saw %r; saw %r" % (pattern, self.seen[-600:]))
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:
                    break
        i = self.seen.index(pattern) + len(pattern)
        before, self.seen = self.seen[:i], self.seen[i:]
        return before

    def send(self, data):
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        os.close(self.master)


def test_repl_through_mpremote(flash):
    (flash / "main.py").write_text(
        "import time\nopen('main.log', 'a').write('m')\nwhile True:\n"
        "    print('tick')\n    time.sleep(0.1)\n"
    )
    with Board(flash) as board:
        board.wait_for("tick")
        term = Terminal([*MPREMOTE, "connect", board.port, "repl"])
        try:
            term.expect("Connected to MicroPython")
            term.expect("tick\r\n")  # main.py's output reaches the port
            term.send("\x03")
            term.expect("KeyboardInterrupt: \r\n")
            term.expect('Type "help()" for more information.\r\n>>> ')
            term.send("1+2\r")
            term.expect("1+2\r\n3\r\n>>> ")
            term.send("for i in 'ab':\r")
            term.expect("... ")
            term.send("print(i * 2)\r")
            term.expect("... ")
            # Backspace takes back the auto-indent; Ctrl-D on the empty line ends the block.
            term.send("\x08\x04")
            term.expect("aa\r\nbb\r\n>>> ")
            term.send("\x04")  # soft reset from the friendly REPL: main.py runs again
            term.expect("MPY: soft reboot\r\n")
            term.expect("tick\r\n")
            assert (flash / "main.log").read_text() == "mm"
            term.send("\x03")
            term.expect(">>> ")
            term.send("\x1d")  # Ctrl-] leaves mpremote
            assert term.proc.wait(10) == 0
        finally:
            term.close()


def test_cli_serves_until_sigterm(flash, tmp_path):
    link = tmp_path / "board" / "tty"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "boardemu.py"), "--flash", str(flash)]
        + ["--link", str(link), "--heap-kb", "96"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert select.select([proc.stdout], [], [], 20)[0], "no port printed"
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/pts/")
        until(lambda: link.is_symlink(), what="the link")
        assert os.readlink(link) == port
        assert mpr(link, "exec", "import os; print(os.getcwd())") == "/\n"
        mpr(link, "fs", "cp", str(REPO / "boot.py"), ":boot.py")
        assert (flash / "boot.py").read_bytes() == (REPO / "boot.py").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not link.exists() and not link.is_symlink()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
