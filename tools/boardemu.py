"""An ESP32 board for mpremote: the real MicroPython unix port behind a pseudo-terminal, with a
directory as the board's flash.

    python3 tools/boardemu.py --flash DIR [--link PATH] [--heap-kb N] [--log FILE]

prints the board's serial port (a pty slave such as /dev/pts/7; --link also makes a symlink to
it, e.g. build/board/tty) and serves until SIGTERM or SIGINT. Every mpremote command then works
against it: `mpremote connect PORT exec|eval|run|fs ...|soft-reset|reset|resume|repl|romfs`.
As a library:

    with Board("build/flash", heap_kb=112) as board:
        subprocess.run(["mpremote", "connect", board.port, "exec", "print(1)"], timeout=30)

How it works. Two processes and two pseudo-terminals:

- The host (this module) owns the outer pty whose slave is the port mpremote opens, keeps the
  slave open itself (so its settings survive mpremote's closes and the port never vanishes),
  and copies bytes between it and an inner pty. A board's UART drops what nobody reads: output
  that sits unread while nothing is read from the port for STALE_S (1 s) is discarded, so a
  chatty board never stalls and a new connection does not get old output (pyserial also
  flushes on open); a connected mpremote reads all the time and loses nothing.
- The board is `micropython tools/board_repl.py` with cwd=DIR, the inner pty slave as its
  terminal (and controlling terminal, in a session of its own). That MicroPython-side script
  speaks the friendly REPL, raw REPL and raw-paste mode, runs boot.py and main.py like the
  ESP32 port's main.c, mounts DIR at "/" with vfs.VfsPosix so both `:lib/x.py` and `:/lib/x.py`
  land in DIR, mounts the ROMFS partition (DIR/.romfs, 256 KiB of 4 KiB blocks, written by
  `mpremote romfs deploy` through the emulated vfs.rom_ioctl) at /rom, and provides
  machine.reset()/soft_reset()/reset_cause(). Its docstring says why the REPL lives there.
- Every boot is a fresh process: a soft reset ends it with an exit code naming the next REPL
  mode (raw or friendly: main.py is skipped after a soft reset from the raw REPL, as on an
  ESP32), machine.reset() asks for a hard reset over a pipe and the host kills and restarts it
  (input not yet read is lost, as on a board), and a crash restarts it too. The port stays.

--heap-kb N gives the firmware N KiB of free GC heap when boot.py starts: the process gets a
larger heap and the board script holds back whatever its own code and the in-RAM ROMFS image
do not already use, so gc.mem_free() at boot is about N KiB (gc.mem_alloc() counts the rest).
Without it the unix port's default heap is used.

Known differences from a board: the ROMFS image is read into the GC heap (a board maps
flash); raw-paste code is received whole before it is compiled (a board compiles while it
streams); text output gets CRLF only while the interrupt character is enabled, which is
always except while code has disabled it with micropython.kbd_intr(-1); sys.platform stays
"linux" so the firmware keeps using its unix-port adapters; os.statvfs() describes the host's
disk; machine.bootloader() is absent. As with a board, wait for the board to come back after
`mpremote reset` (e.g. Board.wait_for("rst:0xc", start=mark)) before the next command: what
reaches it in the 100 ms before machine.reset() runs is lost with the reset.

--log FILE (or BOARDEMU_LOG in the environment) appends all the board's output to FILE, read
or not; Board.output()/wait_for() give the same to tests.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE / "board_repl.py"
ROM_SIZE = 256 * 1024  # the ROMFS partition, backed by DIR/.romfs
HEAP_MARGIN = 256 * 1024  # room for the board script itself above --heap-kb
EXIT_SOFT, EXIT_SOFT_RAW = 100, 101  # board_repl.py's exit codes for a soft reset
# machine.reset_cause() values on an ESP32. Its port reports machine.reset() (ESP_RST_SW) as
# HARD_RESET, as it does a panic; the EN button and a brown-out as PWRON_RESET.
PWRON_RESET, HARD_RESET, SOFT_RESET = 1, 2, 5
STALE_S = 1.0  # output nobody reads for this long is dropped, like a UART's
BACKLOG_MAX = 1 << 20  # bytes buffered either way before the oldest are dropped
TRANSCRIPT_MAX = 4 << 20


def find_micropython() -> str:
    """The unix port: next to this Python (a venv), in the repo's .venv, or on PATH."""
    for cand in (
        Path(sys.executable).parent / "micropython",
        HERE.parent / ".venv/bin/micropython",
    ):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("micropython")
    if found:
        return found
    raise FileNotFoundError("no micropython executable found (pass micropython=...)")


def _raw(fd: int, noflsh: bool = False) -> None:
    """Raw mode on a terminal; the board's own terminal also keeps queues on Ctrl-C and has
    no quit or suspend character (board_repl.py turns ISIG on while code runs)."""
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
        | termios.INPCK
    )
    attrs[1] &= ~termios.OPOST
    attrs[2] = (attrs[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    if noflsh:
        attrs[3] |= termios.NOFLSH
    cc = attrs[6]
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    for i in (termios.VQUIT, termios.VSUSP, termios.VEOF, termios.VSTART, termios.VSTOP):
        cc[i] = b"\x00"
    cc[termios.VINTR] = b"\x03"
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class Board:
    """One emulated ESP32. `start()` returns self; `.port` is its serial port; `stop()` ends it.

    `output()`, `mark()` and `wait_for()` give what the board wrote to its port, whether or
    not anyone read it, with a note where the board process crashed (for tests and logs);
    `reset()` presses the EN button; `boots` counts the board processes started and `dropped`
    the bytes of output that nobody read within STALE_S seconds."""

    def __init__(
        self,
        flash_dir,
        heap_kb: int | None = None,
        *,
        link=None,
        micropython: str | None = None,
        log=None,
        board_name: str = "Generic ESP32 module with ESP32",
    ):
        self.flash = Path(flash_dir).resolve()
        self.heap_kb = heap_kb
        self.link = Path(link) if link else None
        self.micropython = micropython or find_micropython()
        self.board_name = board_name
        self.port: str | None = None
        self.boots = 0  # processes started: power-on, soft and hard resets
        self.dropped = 0  # bytes of output dropped because nobody read them
        self._log_path = log or os.environ.get("BOARDEMU_LOG")  # a log for CI, say
        self._log = None
        self._cond = threading.Condition()
        self._out = bytearray()
        self._out_base = 0  # absolute offset of self._out[0]
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._reset_request: str | None = None
        self._fds: list[int] = []

    # ---- life cycle ----

    def start(self) -> Board:
        self.flash.mkdir(parents=True, exist_ok=True)
        self._m, self._s = os.openpty()  # the port: mpremote opens the slave
        self._m2, self._s2 = os.openpty()  # the board's own terminal
        self._ctrl_r, self._ctrl_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        self._fds = [self._m, self._s, self._m2, self._s2, self._ctrl_r, self._ctrl_w]
        self._fds += [self._wake_r, self._wake_w]
        _raw(self._s)
        _raw(self._s2, noflsh=True)
        for fd in (self._m, self._m2, self._ctrl_r, self._wake_r):
            _nonblocking(fd)
        self.port = os.ttyname(self._s)
        if self.link:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            if self.link.is_symlink() or self.link.exists():
                self.link.unlink()
            self.link.symlink_to(self.port)
        if self._log_path:
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed by stop()
        try:
            self._spawn("power", "friendly", PWRON_RESET)
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._pump, name="boardemu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._fds:
            os.write(self._wake_w, b"x")
        if self._thread:
            self._thread.join(5)
        self._kill()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        if self.link and self.link.is_symlink() and os.readlink(self.link) == self.port:
            self.link.unlink()
        if self._log:
            self._log.close()

    def __enter__(self) -> Board:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        """Press EN: a hard reset with power-on cause, whatever the board is doing."""
        self._reset_request = "power"
        os.write(self._wake_w, b"x")

    # ---- what the board wrote ----

    def mark(self) -> int:
        with self._cond:
            return self._out_base + len(self._out)

    def output(self, start: int = 0) -> bytes:
        with self._cond:
            return bytes(self._out[max(start - self._out_base, 0) :])

    def wait_for(self, pattern, timeout: float = 10.0, start: int = 0) -> int:
        """Waits until the output from `start` on holds `pattern` (bytes, str, or a compiled
        bytes regex); returns the offset after it."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                rel = max(start - self._out_base, 0)
                if isinstance(pattern, bytes):
                    i = self._out.find(pattern, rel)
                    end = i + len(pattern)
                else:
                    m = pattern.search(self._out, rel)
                    i, end = (m.start(), m.end()) if m else (-1, 0)
                if i >= 0:
                    return self._out_base + end
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = bytes(self._out[-800:])
                    raise TimeoutError(
                        "board never wrote %r; its last output: %r" % (pattern, tail)
                    )
                self._cond.wait(left)

    # ---- the board process ----

    def _spawn(self, boot: str, mode: str, cause: int) -> None:
        env = dict(os.environ)
        env.update(
            MICROPYPATH=".frozen:/lib",
            BOARDEMU_BOOT=boot,
            BOARDEMU_MODE=mode,
            BOARDEMU_CAUSE=str(cause),
            BOARDEMU_TTY=os.ttyname(self._s2),
            BOARDEMU_CTRL=str(self._ctrl_w),
            BOARDEMU_ROM_SIZE=str(ROM_SIZE),
            BOARDEMU_BOARD=self.board_name,
            BOARDEMU_HEAP=str(self.heap_kb * 1024 if self.heap_kb else 0),
            BOARDEMU_FROZEN=str(HERE.parent / "build" / "mplib" / "mpy"),
        )
        args = [self.micropython]
        if self.heap_kb:
            try:
                rom = min(os.path.getsize(self.flash / ".romfs"), ROM_SIZE)
            except OSError:
                rom = 0
            args += ["-X", "heapsize=%d" % (self.heap_kb * 1024 + HEAP_MARGIN + rom)]
        # (the unix port wheel aborts on an argument longer than 255 characters)
        args.append(min(str(SHIM), os.path.relpath(SHIM, self.flash), key=len))
        _raw(self._s2, noflsh=True)  # whatever the last process left: Ctrl-C is a byte again
        self._cause = cause
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            args,
            cwd=self.flash,
            env=env,
            stdin=self._s2,
            stdout=self._s2,
            stderr=self._s2,
            start_new_session=True,
            pass_fds=(self._ctrl_w,),
        )
        self.boots += 1

    def _kill(self) -> None:
        p = self._proc
        if p and p.poll() is None:
            p.kill()
            p.wait()

    def _reboot(self, boot: str, cause: int) -> None:
        """A hard reset: the process ends wherever it is and input not yet read is lost."""
        self._kill()
        termios.tcflush(self._s2, termios.TCIFLUSH)
        self._to_board.clear()
        self._spawn(boot, "friendly", cause)

    def _record(self, data: bytes) -> None:
        with self._cond:
            self._out += data
            if len(self._out) > TRANSCRIPT_MAX:
                drop = len(self._out) - TRANSCRIPT_MAX // 2
                del self._out[:drop]
                self._out_base += drop
            self._cond.notify_all()
        if self._log:
            self._log.write(data)
            self._log.flush()

    def _pump(self) -> None:
        self._to_board = bytearray()
        to_host = bytearray()
        written = 0  # bytes written to the port
        consumed = 0  # of those, bytes its reader took (or that were dropped)
        last_read = time.monotonic()
        inq_buf = bytearray(4)
        while not self._stopping:
            try:
                wl = ([self._m] if to_host else []) + ([self._m2] if self._to_board else [])
                rl = [self._m, self._m2, self._ctrl_r, self._wake_r]
                r, w, _ = select.select(rl, wl, [], 0.05)
                if self._wake_r in r:
                    os.read(self._wake_r, 64)
                if self._m in r:
                    data = os.read(self._m, 65536)
                    self._to_board += data
                    del self._to_board[:-BACKLOG_MAX]
                if self._m2 in r:
                    data = os.read(self._m2, 65536)
                    self._record(data)
                    to_host += data
                    del to_host[:-BACKLOG_MAX]
                try:
                    if self._m2 in w:
                        del self._to_board[: os.write(self._m2, self._to_board)]
                    if self._m in w:
                        n = os.write(self._m, to_host)
                        del to_host[:n]
                        written += n
                except BlockingIOError:
                    pass
                # A UART drops what nobody reads: flush what the port's reader left unread.
                fcntl.ioctl(self._s, termios.FIONREAD, inq_buf)
                unread = struct.unpack("i", inq_buf)[0]
                now = time.monotonic()
                if unread == 0 or written - unread != consumed:
                    consumed = written - unread  # (the clock runs only while nothing is read)
                    last_read = now
                elif now - last_read > STALE_S:
                    termios.tcflush(self._s, termios.TCIFLUSH)
                    self.dropped += unread
                self._supervise(r)
            except Exception:  # noqa: BLE001 - the board must outlive any one bad event
                if self._stopping:
                    break
                traceback.print_exc()
                time.sleep(0.1)

    def _supervise(self, readable) -> None:
        """Restarts the board process after a reset or a crash."""
        if self._ctrl_r in readable:
            if b"H" in os.read(self._ctrl_r, 64):
                self._reboot("hard", HARD_RESET)  # machine.reset()
                return
        if self._reset_request:
            boot, self._reset_request = self._reset_request, None
            self._reboot(boot, PWRON_RESET)
            return
        rc = self._proc.poll() if self._proc else None
        if rc is None:
            return
        if rc in (EXIT_SOFT, EXIT_SOFT_RAW):
            self._spawn("soft", "raw" if rc == EXIT_SOFT_RAW else "friendly", self._cause)
            return
        # A crash (the unix port gave up, or was killed): the board reboots, as after a panic.
        self._record(b"\r\n[boardemu: the board process ended with %d; rebooting]\r\n" % rc)
        if time.monotonic() - self._started < 1.0:
            time.sleep(0.5)  # a crash at start-up: do not spin
        self._reboot("crash", HARD_RESET)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flash", required=True, help="directory that is the board's flash")
    ap.add_argument("--link", help="also make this symlink to the port (e.g. build/board/tty)")
    ap.add_argument("--heap-kb", type=int, help="free GC heap at boot, KiB (default: unix's)")
    ap.add_argument("--micropython", help="the unix port executable")
    ap.add_argument("--log", help="append everything the board writes to this file")
    args = ap.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    board = Board(
        args.flash,
        args.heap_kb,
        link=args.link,
        micropython=args.micropython,
        log=args.log,
    ).start()
    print(board.port, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
