"""DeviceStatus, the report DRS wants once a day, and the date format every report uses.

Its own module, apart from `reports`: it is the one periodic call every device makes, and
with the slot reports' code beside it, it was the cycle's largest heap. Imported by the
application when it is due, and dropped again afterwards.
"""

from micropython import const

from dash.link import answer

_DEVICE_STATUS = const((b"POST", b"DrsDeviceStatusInput@1.0", b"DrsDeviceStatusResult@1.0"))
ACCEPTED = (200, 201, 202, 204)  # what a report's answer may be (`reports` too)
_DAY = const(86400)


def iso8601(t):
    """Unix seconds as 'YYYY-MM-DDTHH:MM:SSZ' (integer civil-from-days, no time module)."""
    days, s = divmod(t, 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, s // 3600, s // 60 % 60, s % 60)


def device_status_body(sent):
    return b'{"mostRecentlyActiveDate": "%s"}' % sent.encode()


def device_status(app, sl=None):
    now = app.clock.wall()
    if not now:
        app.wall_retry = app.up_s + 600  # no clock yet: look again in ten minutes
        return None
    ds = app.warm["ds"]
    # Not due yet (the clock became known just now). A last-sent time ahead of the clock (it
    # was ahead, then set back) is unknown, or none would go out for as long as it was ahead.
    if 0 <= now - ds < _DAY:
        app.ds_up = app.up_s + ds + _DAY - now
        return None
    sent = iso8601(now)
    body = device_status_body(sent)
    ans, failed = answer(app, _DEVICE_STATUS, "/deviceStatus", body, ok=ACCEPTED)
    if failed:
        return failed
    app.warm["ds"] = now
    app.ds_up = app.up_s + _DAY
    app.keep()
    app.log("device-status", sent=sent)
    return None
