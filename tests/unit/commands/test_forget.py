"""`attribution forget` (CONTRACT.md section 10): one erasure request, or a refusal naming what is missing."""

from __future__ import annotations

import pytest

from streams.commands import forget
from streams.commands.cli import build_parser, main
from streams.core.erasure import Request


def test_forget_without_an_identifier_is_refused_before_any_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forget"]) == 2
    assert "needs tracking_id or customer_id" in capsys.readouterr().err


def test_forget_publishes_the_request_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[Request] = []

    async def publish_request(bootstrap: str, settings: object, request: Request) -> None:
        published.append(request)

    monkeypatch.setattr(forget, "publish_request", publish_request)
    monkeypatch.setattr("streams.kafka.embedded_broker.resolve_for_producer", lambda s, c: ("127.0.0.1:9", None))
    args = build_parser().parse_args(["forget", "--tracking-id", "T", "--customer-id", "C"])
    from streams.config import Settings

    assert forget.run(Settings(), args) == 0
    assert published == [Request("T", "C")]
