import os

from dash.store import Store, pack

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


def test_a_write_cut_before_its_rename_is_taken_and_a_cut_one_is_not():
    s = fresh_store()
    old, new = {"rt": "Atzr|old"}, {"rt": "Atzr|rotated"}
    s.save("tokens.json", old)
    rec = pack(new)[0]
    with open(ROOT + "/tokens.json.tmp", "wb") as f:
        f.write(rec[:-4])  # the power went while it was being written
    assert Store(ROOT).load("tokens.json") == old
    with open(ROOT + "/tokens.json.tmp", "wb") as f:
        f.write(rec)  # written and closed; the power went before the rename
    assert Store(ROOT).load("tokens.json") == new
    assert "tokens.json.tmp" not in os.listdir(ROOT)  # renamed into place at once
    assert Store(ROOT).load("tokens.json") == new


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
