"""Leaving a suspension: back to the state the episode was in, never a second order for it."""

from dash import episode, fsm


def test_a_slot_suspended_after_its_order_resumes_waiting_for_the_refill():
    # With the order's id, or without one (an ORDER_INPROGRESS without a usable id, taken
    # as the episode's own order).
    for rec in ({"sp": fsm.ORDERED, "ev": "amzn1.e"}, {"sp": fsm.ORDERED, "ev": None}):
        assert episode.unsuspend(rec) == fsm.ORDERED and not rec.get("unc")


def test_a_slot_suspended_while_an_order_may_be_open_starts_over_taking_it_as_its_own():
    for sp in (fsm.ORDERING, fsm.INPROGRESS, fsm.RETRY):
        rec = {"sp": sp, "sk": fsm.K_REG}
        assert episode.unsuspend(rec) == fsm.MONITOR and rec["unc"] == 1 and "sk" not in rec
    rec = {"sp": fsm.MONITOR}
    assert episode.unsuspend(rec) == fsm.MONITOR and not rec.get("unc")
