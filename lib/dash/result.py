"""Outcome codes shared by the LwA and DRS clients and the application. Constants only."""

from micropython import const

OK = const(0)  # done
TRANSIENT = const(1)  # network fault, 429, 5xx: back off and try again
AUTH = const(2)  # DRS refused the access token (400/401/403): refresh once, retry once
SUSPEND = const(3)  # needs a human: unknown slot, bad client credentials
INPROGRESS = const(4)  # DRS: an order is already open
UNKNOWN = const(5)  # DRS answered 200 with something we do not understand
REVOKED = const(6)  # LwA: invalid_grant, the registration (or the code) is gone
UNSUBSCRIBED = const(7)  # DRS: the customer has no subscription for the slot
