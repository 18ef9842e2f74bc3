from dash import fsm


def machine(confirm=3, warmup=2):
    return fsm.Machine(low=200, high=800, confirm=confirm, warmup=warmup)


def feed(m, *levels):
    for v in levels:
        m.sample(v)
    return m.state


def test_warmup_decides_nothing():
    m = machine(warmup=3)
    assert feed(m, 0, 0) == fsm.WARMUP


def test_low_needs_n_consecutive_samples():
    m = machine()
    feed(m, 500, 500)
    assert feed(m, 100, 100) == fsm.CONFIRM
    assert feed(m, 500) == fsm.MONITOR  # one sane reading above low restarts the count
    assert feed(m, 100, 100) == fsm.CONFIRM
    assert feed(m, 100) == fsm.ORDERING


def test_hysteresis_needs_high_to_rearm():
    m = machine(confirm=1)
    feed(m, 500, 500, 100)
    assert m.event(fsm.E_PLACED) == fsm.ORDERED
    assert feed(m, 700, 100, 799) == fsm.ORDERED
    assert feed(m, 800) == fsm.ORDERED  # a refill is two readings at least
    assert feed(m, 800) == fsm.MONITOR


def test_a_refill_is_confirmed_over_several_readings_when_an_order_is_out():
    # A load cell bumped when a door shuts, a glitch through a median of one: one reading at
    # the top is not a refill while the episode's order may be out.
    for confirm in (1, 3):
        for ev in (fsm.E_PLACED, fsm.E_INPROGRESS, fsm.E_RETRY):
            m = machine(confirm=confirm)
            feed(m, 500, 500, *([100] * confirm))
            st = m.event(ev)
            assert feed(m, 900, 100, 900, 500) == st
            n = max(confirm, 2)
            assert feed(m, *([900] * (n - 1))) == st
            assert feed(m, 900) == fsm.MONITOR


def test_one_order_sequence_per_episode():
    m = machine(confirm=1)
    feed(m, 500, 500, 100)
    m.event(fsm.E_PLACED)
    orders = 0
    for v in (100, 50, 0, 0, 300, 100):
        if m.sample(v) == fsm.ORDERING:
            orders += 1
    assert orders == 0


def test_fault_remembers_the_episode():
    m = machine(confirm=1)
    feed(m, 500, 500, 100)
    m.event(fsm.E_PLACED)
    assert feed(m, -1) == fsm.FAULT
    assert feed(m, 100) == fsm.ORDERED  # back where we were, no second order
    assert feed(m, -4, 900) == fsm.ORDERED  # the first of the refill's readings
    assert feed(m, 900) == fsm.MONITOR


def test_fault_never_orders():
    m = machine(confirm=1)
    feed(m, 500, 500)
    for _ in range(20):
        assert m.sample(-2) == fsm.FAULT


def test_fault_during_confirm_restarts_confirmation():
    m = machine(confirm=3)
    feed(m, 500, 500, 100, 100, -1)
    assert m.state == fsm.FAULT
    assert feed(m, 100) == fsm.CONFIRM
    assert feed(m, 100) == fsm.CONFIRM
    assert feed(m, 100) == fsm.ORDERING


def test_backoff_states_and_refill():
    for ev, st in ((fsm.E_INPROGRESS, fsm.INPROGRESS), (fsm.E_RETRY, fsm.RETRY)):
        m = machine(confirm=1)
        feed(m, 500, 500, 100)
        assert m.event(ev) == st
        assert feed(m, 100, 500) == st
        assert m.event(fsm.E_TIMER) == fsm.ORDERING
        m.event(ev)
        assert feed(m, 900, 900) == fsm.MONITOR


def test_suspended_is_final():
    m = machine(confirm=1)
    feed(m, 500, 500, 100)
    assert m.event(fsm.E_SUSPEND) == fsm.SUSPENDED
    assert feed(m, 900, 100, -1) == fsm.SUSPENDED
    assert m.event(fsm.E_TIMER) == fsm.SUSPENDED


def test_restore_resumes_after_warmup():
    m = machine(warmup=2)
    m.restore(fsm.ORDERED)
    assert m.state == fsm.WARMUP
    assert m.durable() == fsm.ORDERED
    assert feed(m, 100, 100) == fsm.ORDERED
    m = machine(warmup=1)
    m.restore(fsm.ORDERING)
    assert feed(m, 100) == fsm.ORDERING
    m.restore(fsm.CONFIRM)
    assert m.durable() == fsm.MONITOR
    m.restore(99)
    assert m.durable() == fsm.MONITOR
    m.restore(fsm.SUSPENDED)
    assert m.state == fsm.SUSPENDED


def test_sample_allocates_nothing():
    import micropython

    m = machine(confirm=1000, warmup=1)
    feed(m, 500, 500)
    micropython.heap_lock()
    try:
        for v in (500, 100, 100, 600, 900, -1, 500):
            m.sample(v)
    finally:
        micropython.heap_unlock()


def test_cancelled_order_rearms_and_may_order_again():
    m = machine(confirm=1)
    feed(m, 500, 500, 100)
    m.event(fsm.E_PLACED)
    assert m.event(fsm.E_REARM) == fsm.MONITOR
    assert feed(m, 100) == fsm.ORDERING


def test_unsubscribed_slot_waits_for_a_subscription_or_a_refill():
    m = machine(confirm=1)
    feed(m, 500, 500, 100)
    assert m.event(fsm.E_UNSUB) == fsm.UNSUBSCRIBED
    assert feed(m, 100, 50, 0) == fsm.UNSUBSCRIBED  # no order, however low
    assert m.event(fsm.E_REARM) == fsm.MONITOR
    assert m.event(fsm.E_UNSUB) == fsm.MONITOR  # outside an order attempt it changes nothing
    assert feed(m, 100) == fsm.ORDERING
    m2 = machine(confirm=1)
    feed(m2, 500, 500, 100)
    m2.event(fsm.E_UNSUB)
    assert feed(m2, 900) == fsm.MONITOR
    assert m2.durable() == fsm.MONITOR


def test_suspended_leaves_only_to_start_over_or_back_to_its_placed_order():
    m = machine()
    m.event(fsm.E_SUSPEND)
    for ev in range(fsm.N_EVENTS):
        if ev != fsm.E_REARM and ev != fsm.E_PLACED:
            assert m.event(ev) == fsm.SUSPENDED
    assert m.event(fsm.E_REARM) == fsm.MONITOR
    m.event(fsm.E_SUSPEND)
    assert m.event(fsm.E_PLACED) == fsm.ORDERED  # waits for the refill, orders nothing


def test_a_refill_while_the_device_was_off_ends_a_resumed_order_attempt():
    m = machine(warmup=1)
    m.restore(fsm.ORDERING)
    assert feed(m, 900) == fsm.MONITOR
    m.restore(fsm.ORDERING)
    assert feed(m, 500) == fsm.ORDERING  # not refilled: the attempt goes on


def test_each_state_keeps_its_name():
    names = [fsm.name(s) for s in range(fsm.N_STATES)]
    assert names == [
        "warmup",
        "monitor",
        "confirm",
        "ordering",
        "ordered",
        "inprogress",
        "retry",
        "fault",
        "suspended",
        "unsubscribed",
    ]


def test_a_name_without_memory_is_the_number():
    import micropython

    micropython.heap_lock()
    try:
        got = fsm.name(fsm.UNSUBSCRIBED)
    finally:
        micropython.heap_unlock()
    assert got in ("unsubscribed", fsm.UNSUBSCRIBED)
