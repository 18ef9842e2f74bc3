"""Leaving a suspension: back to the state the episode was in, never a second order for it."""

from dash import episode, fsm


def test_a_slot_suspended_after_its_order_resumes_waiting_for_the_refill():
    # With the order's id, or without one (an ORDER_INPROGRESS without a usable id, taken
    # as the episode's own order).
    for rec in ({"sp": fsm.ORDERED, "ev": "amzn1.e"}, {"sp": fsm.ORDERED, "ev": None}):
        assert episode.unsuspend(rec) == fsm.ORDERED and not rec.get("unc")


def test_a_slot_suspended_while_ordering_starts_over_taking_an_open_order_as_its_own():
    rec = {"sp": fsm.ORDERING, "sk": fsm.K_REG}
    assert episode.unsuspend(rec) == fsm.MONITOR and rec["unc"] == 1 and "sk" not in rec
    # A back-off keeps what it knew: a RETRY whose request may have been acted on, or not;
    # INPROGRESS is somebody else's order, never taken as ours.
    for sp, unc in ((fsm.RETRY, 1), (fsm.RETRY, 0), (fsm.INPROGRESS, 0)):
        rec = {"sp": sp, "sk": fsm.K_REG, "unc": unc}
        assert episode.unsuspend(rec) == fsm.MONITOR and rec["unc"] == unc
    rec = {"sp": fsm.MONITOR}
    assert episode.unsuspend(rec) == fsm.MONITOR and not rec.get("unc")
