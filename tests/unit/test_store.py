import json
import os
from binascii import crc32

from dash import store
from dash.store import Store

ROOT = "/tmp/dash-unit-store"


def empty_dir(root):
    """`root`, made or emptied: a device's flash directory with nothing on it."""
    try:
        os.mkdir(root)
    except OSError:
        pass
    for f in os.listdir(root):
        os.remove(root + "/" + f)


def fresh_store():
    empty_dir(ROOT)
    return Store(ROOT)


def test_roundtrip_and_no_rewrite_when_unchanged():
    s = fresh_store()
    assert s.save("a.json", {"st": 4, "ev": "x"})
    assert not s.save("a.json", {"st": 4, "ev": "x"})
    assert s.writes == 1
    assert Store(ROOT).load("a.json") == {"st": 4, "ev": "x"}
    assert os.listdir(ROOT) == ["a.json"]


def test_a_record_is_written_as_json_dumps_would_write_it():
    import json

    from dash.store import _pieces

    for obj in ({}, {"a": 1}, {"slots": {"x": {"st": 1}}, "r": 'q"uo\\te \u00e9', "n": None}):
        assert "".join(_pieces(obj)) == json.dumps(obj), obj


def test_corruption_reads_as_none():
    s = fresh_store()
    s.save("a.json", {"st": 4})
    data = open(ROOT + "/a.json", "rb").read()
    for bad in (data[:5], data.replace(b"4", b"5"), b"", b"\x00" * 40, b"[1]\n#0\n"):
        with open(ROOT + "/a.json", "wb") as f:
            f.write(bad)
        assert Store(ROOT).load("a.json") is None, bad
    assert Store(ROOT).load("missing.json") is None


def test_after_load_an_identical_save_is_skipped():
    s = fresh_store()
    s.save("a.json", {"k": 1})
    s2 = Store(ROOT)
    s2.load("a.json")
    assert not s2.save("a.json", {"k": 1})
    assert s2.save("a.json", {"k": 2})


def record(obj, seq):
    """A record as the store writes it, with sequence number `seq`."""
    body = json.dumps(obj).encode()
    return body + store._tail(crc32(body), seq)


def test_a_write_cut_before_its_rename_is_taken_and_a_cut_one_is_not():
    s = fresh_store()
    old, new = {"rt": "Atzr|old"}, {"rt": "Atzr|rotated"}
    s.save("tokens.json", old)  # number 1
    rec = record(new, 2)
    with open(ROOT + "/tokens.json.tmp", "wb") as f:
        f.write(rec[:-4])  # the power went while it was being written
    assert Store(ROOT).load("tokens.json") == old
    with open(ROOT + "/tokens.json.tmp", "wb") as f:
        f.write(rec)  # written and closed; the power went before the rename
    assert Store(ROOT).load("tokens.json") == new
    assert "tokens.json.tmp" not in os.listdir(ROOT)  # renamed into place at once
    assert Store(ROOT).load("tokens.json") == new


def test_a_stale_temporary_file_is_never_taken_for_the_record():
    s = fresh_store()
    first, now = {"ev": "amzn1.dash.v2.o.first"}, {"ev": "amzn1.dash.v2.o.now"}
    s.save("state.json", first)  # number 1
    s.save("state.json", now)  # number 2
    with open(ROOT + "/state.json.tmp", "wb") as f:
        f.write(record(first, 1))  # whole, checksum good, and older
    assert Store(ROOT).load("state.json") == now
    assert "state.json.tmp" not in os.listdir(ROOT)  # and it is gone
    # Its number is part of the checksum: made to look newer, it is not taken either.
    with open(ROOT + "/state.json.tmp", "wb") as f:
        f.write(record(first, 1).replace(b" 1\n", b" 9\n"))
    assert Store(ROOT).load("state.json") == now


def test_a_failed_rename_makes_the_next_save_write_again():
    s = fresh_store()
    a, b = {"st": 1}, {"st": 4}
    s.save("state.json", a)
    # A rename that fails: where the record was, a directory that is not empty.
    os.remove(ROOT + "/state.json")
    os.mkdir(ROOT + "/state.json")
    with open(ROOT + "/state.json/x", "w") as f:
        f.write("x")
    try:
        s.save("state.json", b)
        raise AssertionError("a failed rename must not pass for a write")
    except OSError:
        pass
    os.remove(ROOT + "/state.json/x")
    os.rmdir(ROOT + "/state.json")
    # Back to the state last written: written again all the same, so the whole .tmp of the
    # abandoned one is not what `load` finds after a reboot.
    assert s.save("state.json", a)
    assert Store(ROOT).load("state.json") == a
