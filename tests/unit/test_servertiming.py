"""The Server-Timing header: what the API writes, the bench and the tests read back."""

from app.servertiming import format_server_timing, parse_server_timing


def test_what_is_written_reads_back_in_order() -> None:
    header = format_server_timing({"db": 0.5234, "publish": 1.8})
    assert header == "db;dur=0.52, publish;dur=1.80"
    assert list(parse_server_timing(header).items()) == [("db", 0.52), ("publish", 1.8)]


def test_other_parameters_and_unreadable_durations() -> None:
    header = 'db;desc="write";dur=2, cache, email;dur=oops, sms ; dur=3.5'
    assert parse_server_timing(header) == {"db": 2.0, "sms": 3.5}
