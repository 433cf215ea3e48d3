"""`modelreg dlq outbox ...`: what it accepts, and the clear refusals of what it does not."""

from __future__ import annotations

import pytest

from services.cli.main import build_parser


def test_retry_takes_ids_or_a_service_or_all() -> None:
    parser = build_parser()
    args = parser.parse_args(["dlq", "outbox", "retry", "3", "17"])
    assert (args.dlq_command, args.outbox_command, args.ids) == ("outbox", "retry", [3, 17])
    assert parser.parse_args(["dlq", "outbox", "retry", "--service", "ingest"]).service == "ingest"
    assert parser.parse_args(["dlq", "outbox", "retry", "--all"]).all


@pytest.mark.parametrize("argv", [
    ["dlq", "outbox", "retry"],                        # nothing chosen
    ["dlq", "outbox", "retry", "7", "--all"],          # ids and --all
    ["dlq", "outbox", "discard", "not-a-number"],
    ["dlq", "outbox", "discard"],
    ["dlq", "outbox", "list", "--service", "Bad Name"],
])
def test_bad_usage_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    assert "error" in capsys.readouterr().err


def test_list_defaults_to_parked_rows_only() -> None:
    args = build_parser().parse_args(["dlq", "outbox", "list"])
    assert (args.all, args.limit, args.service) == (False, 100, None)
