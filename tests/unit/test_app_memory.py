"""The application when memory or flash runs short: an event is never lost to a MemoryError
raised by its own log line; a state write without memory, or on a full flash, is postponed to
the next step, not lost; and an order whose intent could not be written does not leave the
device."""

from dash import app as app_module
from dash import ordering, result
from dash.app import App


class Clock:
    def ticks_ms(self):
        return 0

    def ticks_diff(self, a, b):
        return a - b

    def wall(self):
        return 0


class NoRoom:
    @staticmethod
    def dumps(obj):
        raise MemoryError


class FlakyStore:
    """Fails its next `fail` writes for want of memory, then writes."""

    def __init__(self, fail):
        self.fail = fail
        self.saved = 0

    def save(self, name, obj):
        if self.fail:
            self.fail -= 1
            raise MemoryError
        self.saved += 1
        return True


class Unregistered:
    registered = False
    unsaved = False


def app_with(store):
    got = []
    app = App(".", Clock(), got.append, rtc=object())
    app.store = store
    app.cfg = {"sample_s": 60}
    app.tokens = Unregistered()
    return app, got


def test_a_log_line_without_room_for_its_details_is_its_tag():
    app, got = app_with(None)
    app.log("order-placed", slot="a", event_instance_id="e1")
    assert got[-1].startswith("[      0] order-placed {") and '"slot": "a"' in got[-1]
    real = app_module.json
    app_module.json = NoRoom
    try:
        app.log("order-placed", slot="a", event_instance_id="e1")
    finally:
        app_module.json = real
    assert got[-1] == "order-placed"


def test_a_state_write_without_memory_is_made_by_the_next_step():
    store = FlakyStore(1)
    app, got = app_with(store)
    assert app.persist() is False and store.saved == 0
    assert "persist-postponed" in got[-1]
    app.step()
    assert store.saved == 1  # written, without anything having changed since
    app.step()
    assert store.saved == 1  # and only once


def test_a_state_write_on_a_full_flash_is_made_by_the_next_step():
    # A real littlefs, full: its ENOSPC, not a stand-in.
    import os

    import vfs
    from test_powercut import MNT, CuttableRam, _mount

    from dash.store import Store

    bd = CuttableRam()
    vfs.VfsLfs2.mkfs(bd)
    _mount(bd)
    try:
        app, got = app_with(Store(MNT))
        app.state = {"slots": {}, "x": "y" * 300}
        n = 0
        try:
            while True:  # files, each closed, so that littlefs keeps them
                with open(MNT + "/junk%d" % n, "wb") as f:
                    f.write(b"j" * 200)
                n += 1
        except OSError:
            pass  # the flash is full
        assert app.persist() is False and "flash" in got[-1]
        app.step()
        assert "persist-postponed" in got[-1]  # still full: tried again, still not lost
        for k in range(n + 1):
            try:
                os.remove(MNT + "/junk%d" % k)
            except OSError:
                pass
        app.step()
        assert Store(MNT).load("state.json") == app.state
    finally:
        vfs.umount(MNT)


class Slot:
    id = "a"

    def __init__(self):
        self.rec = {}


class OrderingApp:
    """What `_replenish` asks of the application, with a state write that fails (no memory,
    or the flash).
    No transport: a request would fail the test with an AttributeError."""

    class tokens:
        registered = True

    state = {"sub": {"a": 1}}

    def subscriptions_stale(self):
        return False

    def authorise(self):
        return None  # a good token

    def persist(self):
        return False

    def log(self, tag, **fields):
        raise AssertionError("nothing to log before the request: " + tag)


def test_an_order_whose_intent_is_not_on_flash_does_not_leave():
    outcome, eid, code, reason, retry_after = ordering._replenish(OrderingApp(), Slot())
    assert outcome == result.TRANSIENT and eid is None and "not be written" in reason


class Valid:
    registered = True
    unsaved = False

    def valid(self):
        return True


def test_an_order_whose_code_cannot_be_loaded_backs_off():
    from dash import fsm

    app, got = app_with(FlakyStore(0))
    app.tokens = Valid()
    app.cfg["retry_base_s"] = 30
    m = fsm.Machine(100, 800, 1, 1)
    m.state = fsm.ORDERING
    sl = app_module.Slot({"slot_id": "a", "report_delta": 1}, None, None, m)
    app.slots.append(sl)
    real = app_module.lib

    def no_room(name):
        if name == "ordering":
            raise MemoryError
        return real(name)

    app_module.lib = no_room
    try:
        app.order(sl)
    finally:
        app_module.lib = real
    assert m.state == fsm.RETRY and app._left(sl) == 30
    assert any("order-failed" in line and "low memory" in line for line in got)


class Once:
    """A wall clock whose first reading finds no memory (on a 32-bit board it is a big int)."""

    def __init__(self):
        self.failed = False

    def ticks_ms(self):
        return 0

    def ticks_diff(self, a, b):
        return a - b

    def wall(self):
        if not self.failed:
            self.failed = True
            raise MemoryError
        return 1790000000


def test_an_answer_that_cannot_be_taken_in_backs_off_and_is_then_recognised_as_ours():
    from dash import fsm

    app, got = app_with(FlakyStore(0))
    app.clock = Once()
    app.cfg.update(retry_base_s=30, retry_cap_s=3600, order_check_s=3600)
    m = fsm.Machine(100, 800, 1, 1)
    m.state = fsm.ORDERING
    sl = app_module.Slot({"slot_id": "a", "report_delta": 1}, None, None, m)
    sl.rec = {}
    app.slots.append(sl)
    answers = [
        (result.OK, "amzn1.e1", "STANDARD_ORDER_PLACED", "", None),
        (result.INPROGRESS, "amzn1.e2", "ORDER_INPROGRESS", "", None),
    ]
    real = ordering._replenish
    ordering._replenish = lambda app, sl: answers.pop(0)
    try:
        ordering.order(app, sl)
        # The order was placed, but taking it in failed: no second request at the next
        # step, and DRS's ORDER_INPROGRESS for it must not read as somebody else's order.
        assert m.state == fsm.RETRY and app._left(sl) > 0 and sl.rec["unc"] == 1
        m.state = fsm.ORDERING  # the back-off is over
        ordering.order(app, sl)
    finally:
        ordering._replenish = real
    assert m.state == fsm.ORDERED and sl.rec["ev"] == "amzn1.e2" and sl.rec["unc"] == 0
    assert any("order-recovered" in line for line in got)


def test_an_order_without_a_token_writes_no_intent_and_logs_no_request():
    class NoToken(OrderingApp):
        def authorise(self):
            return (result.TRANSIENT, "network: no Wi-Fi", False, None)

        def persist(self):
            raise AssertionError("no intent on flash for a request that cannot leave")

    outcome, eid, code, reason, retry_after = ordering._replenish(NoToken(), Slot())
    assert outcome == result.TRANSIENT and reason == "network: no Wi-Fi" and eid is None
