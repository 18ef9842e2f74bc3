"""The application's log line under memory pressure: an event is never lost to a MemoryError
raised by its own report (a step would fail with it, and on a board `main` too)."""

from dash import app as app_module
from dash.app import App


class Clock:
    def ticks_ms(self):
        return 0


class NoRoom:
    @staticmethod
    def dumps(obj):
        raise MemoryError


def test_a_log_line_without_room_for_its_details_is_its_tag():
    got = []
    app = App(".", Clock(), got.append, rtc=object())
    app.log("order-placed", slot="a", event_instance_id="e1")
    assert got[-1].startswith("[      0] order-placed {") and '"slot": "a"' in got[-1]
    real = app_module.json
    app_module.json = NoRoom
    try:
        app.log("order-placed", slot="a", event_instance_id="e1")
    finally:
        app_module.json = real
    assert got[-1] == "order-placed"
