"""What an outside test of the firmware found (issue 18), each with the test that would have
found it: the real firmware under `micropython` against the emulator."""

import pytest

MIN = 60


@pytest.fixture
def live_device(make_device):
    """A device whose clock runs in real time inside each step, as a board's does: a request
    that takes seconds takes them from the device's time too."""

    def make(**kw):
        return make_device(env={"VDEVICE_LIVE": "1"}, **kw)

    return make


def test_a_retry_after_counts_from_when_the_answer_came(live_device, emulator):
    # The server takes 3 s to answer 429 with Retry-After: 5, and the device samples every
    # second: the next request may not leave before 5 s after the answer, 8 s after the first
    # request left.
    dev = live_device(
        config={"sample_s": 1, "retry_base_s": 1, "retry_cap_s": 60, "warmup_samples": 1}
    )
    emulator.inject(
        "/replenish/", "status", times=1, status=429, headers={"Retry-After": "5"}, after=3
    )
    dev.set_level(100)
    dev.start()
    dev.run(40)
    requests = [up for up, tag, f in dev.events if tag == "order-request"]
    (failed,) = [(up, f) for up, tag, f in dev.events if tag == "order-failed"]
    assert len(requests) >= 2, dev.events
    assert failed[0] - requests[0] >= 3  # its log line is stamped when the answer came
    assert requests[1] - requests[0] >= 3 + 5, (requests, failed)
