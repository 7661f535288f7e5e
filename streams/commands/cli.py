"""The `attribution` command: one subcommand per job (CONTRACT.md section 1).

Each subcommand lives in its own module and is imported only when it runs, so that
`attribution top` does not pay for Faust and a bad setting fails before anything starts.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from streams.config import ConfigError, Settings

# subcommand -> (module, function, help)
COMMANDS = {
    "worker": ("streams.stages.worker", "run", "run the stream processor until SIGINT/SIGTERM"),
    "intake": ("streams.stages.intake_process", "run",
               "read the input topics only, for workers with WORKER_INTAKE=off"),
    "collect": ("streams.commands.collector", "run", "run the HTTP collector (pixel and batch API)"),
    "simulate": ("streams.commands.simulator", "run", "produce a synthetic campaign to the input topics"),
    "demo": ("streams.commands.demo", "run", "embedded broker, worker, collector, simulator and a live KPI table"),
    "top": ("streams.commands.top", "run", "live per-channel KPI table read from metrics.channel"),
    "replay": ("streams.commands.replay", "run", "produce events from a JSON-lines file (backfill)"),
    "forget": ("streams.commands.forget", "run",
               "publish an erasure request for a tracking ID and/or a customer ID (confirmed on erasure-log)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attribution", description="Real-time marketing attribution engine.")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides KAFKA_BOOTSTRAP)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, text) in COMMANDS.items():
        sub.add_parser(name, help=text, description=text)
    sim = sub.choices["simulate"]
    sim.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    sim.add_argument("--duration", default="60s", help="how long to run, e.g. 30s, 5m (default 60s); 0 = forever")
    sim.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    sim.add_argument("--channels", default="", help="comma-separated channel names (default: all)")
    sim.add_argument("--refunds", type=float, default=0.08,
                     help="share of orders refunded, some partly, some cancelled (default 0.08; 0: none)")
    sub.choices["demo"].add_argument("--rate", type=float, default=300.0, help="simulated events per second")
    sub.choices["top"].add_argument("--once", action="store_true", help="print one table and exit")
    sub.choices["top"].add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds")
    sub.choices["replay"].add_argument("file", help="JSON-lines file of events")
    sub.choices["forget"].add_argument("--tracking-id", help="the visitor's tracking ID")
    sub.choices["forget"].add_argument("--customer-id", help="the customer's id (their tracking IDs go too)")
    sub.choices["worker"].add_argument("--web-port", type=int, help="overrides WEB_PORT")
    sub.choices["intake"].add_argument("--web-port", type=int, help="overrides WEB_PORT")
    sub.choices["collect"].add_argument("--port", type=int, help="overrides COLLECTOR_PORT")
    affiliates = sub.add_parser("affiliates", help="affiliate and influencer records")
    affiliates_sub = affiliates.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = affiliates_sub.add_parser("load", help="publish a JSON list of affiliates to the affiliates topic")
    load.add_argument("file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"attribution: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.bootstrap:
        settings = _with(settings, kafka_bootstrap=args.bootstrap)
    if getattr(args, "web_port", None):
        settings = _with(settings, web_port=args.web_port)
    if getattr(args, "port", None):
        settings = _with(settings, collector_port=args.port)
    if args.command == "affiliates":
        module_name, function_name = "streams.commands.affiliates", "load"
    else:
        module_name, function_name, _ = COMMANDS[args.command]
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        return int(function(settings, args) or 0)
    except KeyboardInterrupt:
        return 130


def _with(settings: Settings, **changes: object) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
