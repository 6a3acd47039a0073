"""The `labpnn` command: run, inspect, sim, gui."""

from __future__ import annotations

import argparse
import sys

from labpnn.errors import LabpnnError


def _sim(args: argparse.Namespace) -> int:
    if args.instrument == "crossbar":
        from labpnn.sim_devices.scpi_server import cli_main
    else:
        from labpnn.sim_devices.opu_server import cli_main
    return cli_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labpnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("sim", help="serve a simulated instrument on its wire protocol")
    sim.add_argument("instrument", choices=["crossbar", "opu"])
    sim.add_argument("rest", nargs=argparse.REMAINDER, help="options of the simulator (--help)")
    sim.set_defaults(func=_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabpnnError as exc:
        print(f"labpnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labpnn: interrupted", file=sys.stderr)
        return 130
