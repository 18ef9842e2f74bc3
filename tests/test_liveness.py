"""The watchdog against slow servers (issue 20): the real firmware under `micropython`, its
clock running in real time inside each step, a fake watchdog that keeps the longest real time
between two feeds. Every slow server the transport handles keeps that gap within the worst
bounded call (7 x http_timeout_s), far under the watchdog's timeout."""

import pytest

T = 2  # http_timeout_s
SLACK_S = 4  # TLS, JSON and flash on a loaded machine, on top of the transport's bounds
SLOW = [
    ("silence", {"seconds": 30}),  # takes the connection, never says a word
    ("drip", {"interval": 0.5}),  # the answer a byte every half second
    ("keep_open", {"seconds": 30}),  # the whole answer, then the connection held open
    ("delay", {"seconds": 30}),  # the answer after half a minute
]


@pytest.mark.parametrize("kind,kw", SLOW, ids=[k for k, _ in SLOW])
def test_the_watchdog_is_fed_within_the_worst_bounded_call(make_device, emulator, kind, kw):
    config = {
        "http_timeout_s": T,
        "sample_s": 1,
        "warmup_samples": 1,
        "confirm_samples": 1,
        "retry_base_s": 1,
        "retry_cap_s": 2,
    }
    dev = make_device(config=config, env={"VDEVICE_LIVE": "1", "VDEVICE_WDT": "1"})
    # The token refresh meets silence (a fault that processes it would rotate the token away).
    emulator.inject("/auth/o2/token", "silence", times=1, seconds=30)
    emulator.inject("/replenish/", kind, times=1, **kw)
    dev.set_level(100)
    dev.start()
    dev.run(90)
    gap = dev.command("wdt")
    assert emulator.pending_faults() == 0, dev.events  # each slow answer was met
    assert gap["max_gap_ms"] <= (7 * T + SLACK_S) * 1000, gap
    assert gap["max_gap_ms"] >= T * 1000 - 500, gap  # it did measure the slow calls


def test_no_config_allows_a_call_longer_than_the_watchdog_allows(make_device):
    # The worst bounded call at the largest http_timeout_s config.json takes, with a quarter
    # of the watchdog's timeout to spare (docs/embedding.md states it).
    dev = make_device(config={"http_timeout_s": 61})
    dev.start()
    assert any(
        tag == "config-error" and "http_timeout_s" in f["message"] for _, tag, f in dev.events
    )
