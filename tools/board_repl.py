"""The board side of tools/boardemu.py: an ESP32's start-up and REPL, run by the unix port.

`boardemu.py` starts `micropython board_repl.py` once per boot, with the board's flash
directory as the working directory and the slave of an inner pseudo-terminal as stdin, stdout
and stderr. This script then does what an ESP32's `main.c` and `pyexec.c` do:

- power-on / hard reset: print the ROM boot lines; every start: mount the flash directory at
  "/" (`vfs.VfsPosix(flash)`), mount the ROM partition at /rom when it holds a ROMFS image,
  set sys.path to ['', '.frozen', '/rom', '/rom/lib', '/lib'] (the /rom entries only when
  mounted), run boot.py, then main.py (only in the friendly REPL mode, and not when boot.py
  raised), then the REPL;
- the friendly REPL (line editing, history, auto-indent, paste mode) and the raw REPL with
  raw-paste flow control, byte for byte as mpremote expects them;
- a soft reset (Ctrl-D, SystemExit, `machine.soft_reset()`) prints "MPY: soft reboot" and
  ends this process with an exit code that tells the host in which REPL mode to start the
  next one, so every boot gets a fresh interpreter and heap; `machine.reset()` asks the
  host (over a pipe) for a hard reset, which kills and restarts the process.

Why the REPL is spoken here and not by the host: user code shares the byte stream with the
REPL (mpremote's `mount` reads sys.stdin inside an exec, `input()` reads the REPL's stream),
so the one process that reads stdin must be the interpreter. The unix port's own REPL cannot
be used: Ctrl-D ends the process, it never runs boot.py/main.py, and its messages differ.

Ctrl-C is a UART interrupt on a board: the character is consumed and KeyboardInterrupt is
raised, but only while code runs (`pyexec` disables it while the REPL reads a line). Here the
kernel does the same: while code runs, ISIG is on with VINTR set to the interrupt character,
so the terminal turns Ctrl-C into SIGINT (the unix port raises KeyboardInterrupt on SIGINT);
while the REPL reads, ISIG is off and Ctrl-C is an ordinary byte. `micropython.kbd_intr()`
changes the character or turns it off, as on a board. Text that code prints gets LF -> CRLF
like a board's stdout, done by the terminal (OPOST|ONLCR) and tied to the interrupt being
enabled, so binary transfers (mpremote's `mount` disables the interrupt around them) pass
unchanged.

vfs.rom_ioctl() is emulated as the ESP32 port has it: op 1 gives 1 partition, op 2 gives an
esp32.Partition-like object (ioctl 4/5/6 = block count, block size, erase; readblocks;
writeblocks, which with an offset only clears bits like NOR flash; the buffer protocol, so
VfsRom mounts it), other ops give -EINVAL. So `mpremote romfs deploy` takes the same path as
on an ESP32: rom_ioctl(1), rom_ioctl(2, 0), dev.ioctl(4/5), dev.ioctl(6, block) for each
block, dev.writeblocks(block, buf, offset). The partition is the file .romfs in the flash
directory (created erased on first write), which os.listdir("/") does not show.

`os` is wrapped so that os.ilistdir gives 4-tuples with sizes, as littlefs does (VfsPosix
gives 3), which is what `mpremote fs ls` prints; `machine` gains reset(), soft_reset(),
reset_cause() (1 after power-on, 2 after machine.reset() or a crash, as the ESP32 port says),
unique_id(), freq() and a minimal RTC (datetime() is kept as an offset; it does not move
time.time()).

Environment (set by boardemu.py): BOARDEMU_BOOT (power, hard, crash, soft), BOARDEMU_MODE
(friendly, raw), BOARDEMU_CAUSE (machine.reset_cause()), BOARDEMU_TTY (the terminal to take
as controlling terminal), BOARDEMU_CTRL (fd of the pipe to the host), BOARDEMU_HEAP (bytes of
GC heap left free when boot.py starts, 0 = all), BOARDEMU_ROM_SIZE (bytes), BOARDEMU_BOARD,
BOARDEMU_FROZEN (a host directory of the modules stock ESP32 firmware has frozen in and this
unix port lacks, umqtt.simple: imported from there before the flash is mounted, so that they
are there and the flash is not where they come from; unlike frozen code they take heap).
"""

import gc
import io
import os
import sys
import termios
import time

import machine
import micropython
import vfs

EXIT_SOFT = 100  # exit code: soft reset, next boot in the friendly REPL
EXIT_SOFT_RAW = 101  # exit code: soft reset, next boot in the raw REPL

_env = os.getenv
_SHIM = __file__
_BOOT = _env("BOARDEMU_BOOT") or "power"
_CAUSE = int(_env("BOARDEMU_CAUSE") or "1")
_HEAP = int(_env("BOARDEMU_HEAP") or "0")
_ROM_SIZE = int(_env("BOARDEMU_ROM_SIZE") or "262144")
_ROM_BLOCK = 4096
_ROM_FILE = "/.romfs"
_BOARD = _env("BOARDEMU_BOARD") or "Generic ESP32 module with ESP32"
_VERSION = sys.version.split("; ", 1)[-1]  # "MicroPython <build> on <date>"

# A session leader that opens a terminal makes it its controlling terminal: needed so that
# the terminal's Ctrl-C reaches this process as SIGINT.
_ctty = open(_env("BOARDEMU_TTY"), "rb") if _env("BOARDEMU_TTY") else None
_ctrl = open("/dev/fd/" + _env("BOARDEMU_CTRL"), "wb") if _env("BOARDEMU_CTRL") else None

_out = sys.stdout.buffer.write
_in = sys.stdin.buffer
_b1 = bytearray(1)

# Terminal flags (Linux values).
_ISIG = 0o1
_OPOST = 0o1
_ONLCR = 0o4
try:
    _attrs = termios.tcgetattr(0)
except OSError:
    _attrs = None


def _tty(intr, cooked):
    """Interrupt character (-1: none) and output cooking of the board's terminal."""
    a = _attrs
    if a is None:
        return
    cc = a[6]
    cc[0] = bytes((intr,)) if intr >= 0 else b"\x00"
    oflag = (a[1] | _OPOST | _ONLCR) if cooked else (a[1] & ~_OPOST)
    lflag = (a[3] | _ISIG) if intr >= 0 else (a[3] & ~_ISIG)
    termios.tcsetattr(0, termios.TCSANOW, [a[0], oflag, a[2], lflag, a[4], a[5], cc])


def _idle():
    """The REPL reads: Ctrl-C is a byte, output is written as is."""
    _tty(-1, False)


def _getc():
    try:
        n = _in.readinto(_b1)
    except OSError:
        n = 0
    if n != 1:
        sys.exit(1)  # the terminal went away: the host is gone
    return _b1[0]


def _pending():
    # Backward jumps let a KeyboardInterrupt that is already pending surface here.
    i = 0
    while i < 2:
        i += 1


# ---- modules as the ESP32 has them ------------------------------------------------------


class _Module:
    def __init__(self, mod, name):
        for k in dir(mod):
            if not k.startswith("__"):
                setattr(self, k, getattr(mod, k))
        self.__name__ = name


def _kbd_intr(c):
    _tty(c, c >= 0)


def _hard_reset():
    if _ctrl is not None:
        _ctrl.write(b"H")
        t = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t) < 5000:
            time.sleep_ms(10)  # the host ends this process: a reset never returns
    raise SystemExit(EXIT_SOFT)


def _soft_reset():
    raise SystemExit


class RTC:
    _offset = 0

    def datetime(self, dt=None):
        if dt is None:
            t = time.localtime(time.time() + RTC._offset)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        RTC._offset = secs - time.time()
        return None


class Partition(bytearray):
    """The ROM partition, as esp32.Partition: block device methods, and its contents as a
    buffer (only the part holding the image is kept in RAM; on a board it is mapped flash)."""

    def info(self):
        return (1, 0x40, 0x200000, _ROM_SIZE, "romfs", False)

    def ioctl(self, op, arg):
        if op == 4:
            return _ROM_SIZE // _ROM_BLOCK
        if op == 5:
            return _ROM_BLOCK
        if op == 6:
            self.writeblocks(arg, b"\xff" * _ROM_BLOCK)
        return 0

    def readblocks(self, block, buf, offset=0):
        try:
            with open(_ROM_FILE, "rb") as f:
                f.seek(block * _ROM_BLOCK + offset)
                n = f.readinto(buf)
        except OSError:
            n = 0
        for i in range(n, len(buf)):
            buf[i] = 0xFF

    def writeblocks(self, block, buf, offset=None):
        """Without offset: erase, then write. With it: a NOR flash write, which can only
        clear bits (mpremote erases with ioctl(6, block) first)."""
        pos = block * _ROM_BLOCK + (offset or 0)
        if pos < 0 or pos + len(buf) > _ROM_SIZE:
            raise OSError(22)
        try:
            f = open(_ROM_FILE, "r+b")
        except OSError:
            f = open(_ROM_FILE, "wb")
            erased = b"\xff" * _ROM_BLOCK
            for _ in range(_ROM_SIZE // _ROM_BLOCK):
                f.write(erased)
        with f:
            if offset is not None:
                f.seek(pos)
                old = f.read(len(buf))
                buf = bytearray(buf)
                for i in range(len(buf)):
                    buf[i] &= old[i]
            f.seek(pos)
            f.write(buf)
        for i in range(pos, min(len(self), pos + len(buf))):
            self[i] = buf[i - pos]


def _load_rom():
    """The partition with the image it holds (or its first bytes) in RAM; mounted or not."""
    try:
        with open(_ROM_FILE, "rb") as f:
            head = f.read(16)
            n = 32
            if head[:3] == b"\xd2\xcd\x31":
                size = 0
                i = 3
                while i < len(head):
                    size = (size << 7) | (head[i] & 0x7F)
                    i += 1
                    if not head[i - 1] & 0x80:
                        break
                n = min(max(i + size, n), _ROM_SIZE)
            f.seek(0)
            data = f.read(n)
    except OSError:
        data = b""
    part = Partition(data + b"\xff" * (32 - len(data)) if len(data) < 32 else data)
    data = None
    try:
        vfs.mount(vfs.VfsRom(part), "/rom")
        return part, True
    except Exception:  # noqa: BLE001 - an erased or invalid partition is not mounted
        return part, False


def _root(path):
    if not path.startswith("/"):
        path = os.getcwd().rstrip("/") + "/" + path
    return path.rstrip("/.") == ""


def _ilistdir(path=""):
    """os.ilistdir as littlefs gives it: with sizes; the ROM partition's file hidden."""
    root = _root(path)
    for e in _os_ilistdir(path):
        if root and e[0] == ".romfs":
            continue
        if len(e) == 3:
            size = 0
            if e[1] == 0x8000:
                try:
                    size = os.stat((path.rstrip("/") + "/" if path else "") + e[0])[6]
                except OSError:
                    pass
            e = (e[0], e[1], e[2], size)
        yield e


def _listdir(path=""):
    return [e[0] for e in _ilistdir(path)]


def _rom_ioctl(op, *args):
    if op == 1:
        return 1
    if op == 2:
        if args and args[0] != 0:
            return -22
        return _ROM
    return -22  # the ESP32 port implements only ops 1 and 2 (the partition has the rest)


# ---- running code -----------------------------------------------------------------------

OK, EXC, EXIT = 0, 1, 2
G = {"__name__": "__main__"}
_ROM = None  # the ROM partition object
_os_ilistdir = None
_BALLAST = None  # heap held back from the firmware (see _ballast)


def _print_exception(e):
    try:
        s = io.StringIO()
        sys.print_exception(e, s)
        lines = s.getvalue().split("\n")
        s = None
        for line in lines:
            if line and _SHIM not in line:
                print(line)
    except MemoryError:
        sys.print_exception(e)


def _run(src, name, mode, eof=False):
    """Compiles and runs code as pyexec's parse_compile_execute does: OK, EXC or EXIT."""
    res = OK
    try:
        if name != "<stdin>":
            with open(name) as f:
                src = f.read()
        elif not isinstance(src, str):
            src = str(src, "utf-8")
        if mode == "exec":
            G["__file__"] = name
        code = compile(src, name, mode)
        src = None
        _tty(3, True)
        exec(code, G)
        code = None
        _tty(-1, True)
        _pending()
        if eof:
            _out(b"\x04")
    except SystemExit:
        res = EXIT
    except BaseException as e:  # noqa: B036 - the REPL reports everything
        _tty(-1, True)
        res = EXC
        if eof:
            _out(b"\x04")
        _print_exception(e)
    if eof:
        if res == EXIT:
            _out(b"\x04")
        _out(b"\x04")
    _idle()
    return res


def _needs_more(src):
    """Whether the friendly REPL reads another line (py/repl.c's rules)."""
    if not src:
        return False
    i = 0
    while i < len(src) and (src[i].isalpha() or src[i].isdigit() or src[i] == "_"):
        i += 1
    compound = (
        src[:i]
        in (
            "if",
            "while",
            "for",
            "try",
            "with",
            "def",
            "class",
            "async",
        )
        or src[0] == "@"
    )
    depth = 0
    quote = None
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if quote:
            if c == "\\":
                i += 1
            elif src.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c == "#":
            while i < n and src[i] != "\n":
                i += 1
        elif c in "'\"":
            quote = src[i : i + 3] if src[i : i + 3] in ("'''", '"""') else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    if quote and len(quote) == 3:
        return True
    if depth > 0 or src[-1] == "\\":
        return True
    return compound and src[-1] != "\n"


# ---- friendly REPL ----------------------------------------------------------------------

_hist = []


def _indent(src):
    """Auto-indent of a continuation line (shared/readline's rules)."""
    lines = src.split("\n")
    last = lines[-2]
    if len(lines) > 2 and not last.strip() and not lines[-3].strip():
        return 0
    n = (len(last) - len(last.lstrip(" "))) // 4
    if last.endswith(":"):
        n += 1
    return 4 * n


def _complete(word):
    """Names that complete `word` ("a.b" completes attributes of a)."""
    parts = word.split(".")
    if len(parts) == 1:
        import builtins

        names = list(G) + dir(builtins)
    else:
        obj = G.get(parts[0])
        if obj is None:
            try:
                obj = __import__(parts[0]) if parts[0] in sys.modules else None
            except ImportError:
                obj = None
        for p in parts[1:-1]:
            obj = getattr(obj, p, None)
        if obj is None:
            return parts[-1], []
        names = dir(obj)
    prefix = parts[-1]
    found = []
    for name in names:
        if name.startswith(prefix) and (prefix or name[0] != "_") and name not in found:
            found.append(name)
    found.sort()
    return prefix, found


def _readline(prompt, src):
    """One line with echo and editing: (control character that ended it or 0, bytes)."""
    _out(prompt)
    buf = bytearray()
    if src:
        n = _indent(src)
        if n:
            buf.extend(b" " * n)
            _out(buf)
    cur = len(buf)
    hist = -1
    while True:
        c = _getc()
        start = cur  # where the redraw starts, if anything changed
        size = len(buf)
        new = cur
        changed = False
        if 1 <= c <= 5 and not buf:  # (the auto-indent makes a line non-empty)
            return c, buf
        if c == 3:
            return 3, buf
        if c == 13:
            _out(b"\r\n")
            if buf and (not _hist or _hist[0] != buf):
                _hist.insert(0, bytes(buf))
                del _hist[8:]
            return 0, buf
        if c == 27:
            c = _getc()
            if c in (0x5B, 0x4F):
                c = _getc()
                if 0x30 <= c <= 0x39:
                    if _getc() != 0x7E:
                        continue
                    c = {0x31: 0x48, 0x37: 0x48, 0x34: 0x46, 0x38: 0x46, 0x33: 4}.get(c, 0)
                else:
                    c = {0x41: 16, 0x42: 14, 0x43: 6, 0x44: 2, 0x48: 0x48, 0x46: 0x46}.get(c, 0)
                if not c:
                    continue
                if c == 0x48:
                    c = 1
                elif c == 0x46:
                    c = 5
                elif c == 4 and cur == len(buf):
                    continue
            else:
                continue
        if c in (8, 127):
            if cur:
                n = 4 if cur >= 4 and not buf[:cur].strip(b" ") else 1  # a level of indent
                buf[cur - n : cur] = b""
                start = new = cur - n
                changed = True
        elif c == 1:
            new = 0
        elif c == 5:
            new = len(buf)
        elif c == 2:
            new = max(cur - 1, 0)
        elif c == 6:
            new = min(cur + 1, len(buf))
        elif c == 4:
            if cur < len(buf):
                buf[cur : cur + 1] = b""
                changed = True
        elif c == 11:
            buf[cur:] = b""
            changed = True
        elif c == 21:
            buf[:cur] = b""
            start = new = 0
            changed = True
        elif c in (14, 16):
            hist = min(hist + 1, len(_hist) - 1) if c == 16 else max(hist - 1, -1)
            buf[:] = _hist[hist] if hist >= 0 else b""
            start = 0
            new = len(buf)
            changed = True
        elif c == 9:
            i = cur
            while i and (
                chr(buf[i - 1]).isalpha() or chr(buf[i - 1]).isdigit() or buf[i - 1] in b"._"
            ):
                i -= 1
            try:
                prefix, found = _complete(str(bytes(buf[i:cur]), "utf-8"))
            except Exception:  # noqa: BLE001 - completion must never break the REPL
                found = []
            if len(found) == 1:
                add = found[0][len(prefix) :]
            else:
                add = found[0][len(prefix) :] if found else ""
                for name in found:
                    while not name.startswith(prefix + add):
                        add = add[:-1]
            if add:
                buf[cur:cur] = add.encode()
                new = cur + len(add)
                changed = True
            elif len(found) > 1:
                _out(b"\r\n" + "  ".join(found).encode() + b"\r\n" + prompt + buf)
                _out(b"\b" * (len(buf) - cur))
        elif c >= 32:
            buf[cur:cur] = bytes((c,))
            new = cur + 1
            changed = True
        if changed:
            erase = b"\x1b[K" if len(buf) < size else b""
            _out(b"\b" * (cur - start) + buf[start:] + erase + b"\b" * (len(buf) - new))
        elif new < cur:
            _out(b"\b" * (cur - new))
        elif new > cur:
            _out(buf[cur:new])
        cur = new


def _friendly_repl():
    """Returns "raw" (Ctrl-A) or "reset"."""
    banner = True
    while True:
        if banner:
            _out(("%s; %s\r\n" % (_VERSION, _BOARD)).encode())
            _out(b'Type "help()" for more information.\r\n')
            banner = False
        ret, line = _readline(b">>> ", None)
        mode = "single"
        if ret == 1:
            _out(b"\r\n")
            return "raw"
        if ret == 2:
            _out(b"\r\n")
            banner = True
            continue
        if ret == 3:
            _out(b"\r\n")
            continue
        if ret == 4:
            _out(b"\r\n")
            return "reset"
        if ret == 5:
            _out(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
            line = bytearray()
            while True:
                c = _getc()
                if c == 3:
                    _out(b"\r\n")
                    line = None
                    break
                if c == 4:
                    _out(b"\r\n")
                    break
                line.append(c)
                _out(b"\r\n=== " if c == 13 else bytes((c,)))
            if line is None:
                continue
            mode = "exec"
        elif not line:
            continue
        else:
            src = str(line, "utf-8")
            while _needs_more(src):
                src += "\n"
                ret, more = _readline(b"... ", src)
                if ret == 3:
                    _out(b"\r\n")
                    src = None
                    break
                if ret == 4:
                    break
                src += str(more, "utf-8")
            if src is None:
                continue
            line = src
        src = None
        if _run(line, "<stdin>", mode) == EXIT:
            return "reset"


# ---- raw REPL ---------------------------------------------------------------------------


def _raw_paste(kind):
    """Raw-paste mode: reads the code with flow control, then runs it."""
    if kind != ord("A"):
        _out(b"R\x00")
        return OK
    _out(b"R\x01\x80\x00\x01")  # window of 128 bytes; 2 windows free
    data = bytearray()
    window = 128
    while True:
        c = _getc()
        if c in (3, 4):
            _out(b"\x04")
            if c == 3:
                _out(b"\x04Traceback (most recent call last):\r\n")
                _out(b"KeyboardInterrupt: \r\n\x04")
                return OK
            break
        data.append(c)
        window -= 1
        if not window:
            _out(b"\x01")
            window = 128
    return _run(data, "<stdin>", "exec", eof=True)


def _raw_repl():
    """Returns "friendly" (Ctrl-B) or "reset"."""
    _out(b"raw REPL; CTRL-B to exit\r\n")
    while True:
        _out(b">")
        line = bytearray()
        while True:
            c = _getc()
            if c == 1:
                if len(line) == 2 and line[0] == 5:
                    if _raw_paste(line[1]) == EXIT:
                        return "reset"
                    line = bytearray()
                    _out(b">")
                    continue
                _out(b"raw REPL; CTRL-B to exit\r\n>")
                line = bytearray()
            elif c == 2:
                _out(b"\r\n")
                return "friendly"
            elif c == 3:
                line = bytearray()
            elif c == 4:
                break
            else:
                line.append(c)
        _out(b"OK")
        if not line:
            _out(b"\r\n")
            return "reset"
        if _run(line, "<stdin>", "exec", eof=True) == EXIT:
            return "reset"


# ---- start-up ---------------------------------------------------------------------------


def _exists(name):
    try:
        return os.stat(name)[0] & 0x8000 != 0
    except OSError:
        return False


def _largest():
    """The largest free block of the heap (found by trying allocations)."""
    lo, hi = 0, gc.mem_free()
    while hi - lo > 64:
        mid = (lo + hi) // 2
        try:
            bytearray(mid)
            lo = mid
        except MemoryError:
            hi = mid
    return lo


def _ballast(target):
    """Holds back heap so that `target` bytes are free, in one block at the end: the holes
    the start-up left are filled first, then the start of the large free block."""
    import uctypes

    gc.collect()
    keep = []
    size = _largest()
    if size <= target:
        return keep
    probe = bytearray(size)
    tail = uctypes.addressof(probe)  # the largest free block starts here
    probe = None
    gc.collect()
    while size >= 16:
        try:
            b = bytearray(size)
        except MemoryError:
            size //= 2
            continue
        if uctypes.addressof(b) < tail:
            keep.append(b)  # filled a hole
        else:
            b = None
            gc.collect()
            size //= 2
    gc.collect()
    rest = gc.mem_free() - target - 32
    if rest > 0:
        keep.append(bytearray(rest))
    return keep


def _frozen():
    where = _env("BOARDEMU_FROZEN")
    if where:
        sys.path.insert(0, where)
        try:
            import umqtt.simple  # noqa: F401
        except Exception:  # noqa: BLE001 - not there, no room: a board without it
            pass
        sys.path.pop(0)


def main():
    _idle()
    micropython.kbd_intr(3)  # SIGINT raises KeyboardInterrupt; the terminal decides when
    _frozen()
    if _BOOT != "soft":
        cause = "0x1 (POWERON_RESET)" if _BOOT == "power" else "0xc (SW_CPU_RESET)"
        _out(("ets Jul 29 2019 12:21:46\r\n\r\nrst:%s," % cause).encode())
        _out(b"boot:0x13 (SPI_FAST_FLASH_BOOT)\r\nentry 0x400805cc\r\n")
    flash = os.getcwd()
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix(flash), "/")
    os.chdir("/")

    global _ROM
    _ROM, mounted = _load_rom()
    sys.path[:] = ["", ".frozen"] + (["/rom", "/rom/lib"] if mounted else []) + ["/lib"]

    mp = _Module(micropython, "micropython")
    mp.kbd_intr = _kbd_intr
    sys.modules["micropython"] = mp
    global _os_ilistdir
    _os_ilistdir = os.ilistdir
    o = _Module(os, "os")
    o.ilistdir = _ilistdir
    o.listdir = _listdir
    sys.modules["os"] = sys.modules["uos"] = o
    v = _Module(vfs, "vfs")
    v.rom_ioctl = _rom_ioctl
    sys.modules["vfs"] = v
    m = _Module(machine, "machine")
    m.reset = _hard_reset
    m.soft_reset = _soft_reset
    m.reset_cause = lambda: _CAUSE
    m.PWRON_RESET, m.HARD_RESET, m.WDT_RESET, m.DEEPSLEEP_RESET, m.SOFT_RESET = 1, 2, 3, 4, 5
    m.unique_id = lambda: b"\x24\x0a\xc4\x00\xbe\xef"
    m.freq = lambda hz=None: 160000000 if hz is None else None
    m.RTC = RTC
    sys.modules["machine"] = sys.modules["umachine"] = m

    global _BALLAST
    _BALLAST = _ballast(_HEAP) if _HEAP else None

    raw = _env("BOARDEMU_MODE") == "raw"
    res = _run(None, "boot.py", "exec") if _exists("boot.py") else OK
    if res == OK and not raw and _exists("main.py"):
        res = _run(None, "main.py", "exec")
    while res != EXIT:
        try:
            if raw:
                nxt = _raw_repl()
                raw = nxt != "friendly"
            else:
                nxt = _friendly_repl()
                raw = nxt == "raw"
            if nxt == "reset":
                break
        except KeyboardInterrupt:
            _idle()  # a Ctrl-C that arrived just as code ended: nothing to interrupt
        except Exception as e:  # noqa: BLE001 - a fault of this script must not reboot the board
            _idle()
            _print_exception(e)
    _out(b"MPY: soft reboot\r\n")
    sys.exit(EXIT_SOFT_RAW if raw else EXIT_SOFT)


main()
