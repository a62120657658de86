"""The `embedops` command: a table of subcommands, one small function each.

To add a subcommand, write ``_add_<name>(parser)`` (its options) and
``_run_<name>(args) -> int`` (its exit status), then add a `Subcommand` row to
`SUBCOMMANDS`. Import heavy modules (Textual, the supervisor) inside the run function,
so ``embedops check`` stays fast and never imports a UI.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from console import config as fleet_config
from console.model import Engine

if TYPE_CHECKING:
    from pathlib import Path

    from backends.sglang import FlagCatalogue


@dataclass(frozen=True)
class Subcommand:
    """One row of the subcommand table."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (default: ``$EMBEDOPS_CONFIG``, else ``./fleet.toml``)."""
    parser.add_argument(
        "--config", "-c", metavar="FILE", default=None,
        help=f"fleet file (default: ${fleet_config.ENV_CONFIG}, else ./{fleet_config.DEFAULT_CONFIG})")


# ---- check --------------------------------------------------------------------------


def _add_check(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--sglang-help", action="store_true",
        help="run the installed SGLang's --help once and cache its flags in the state "
             "directory, then check against them (slow: imports SGLang)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print problems only, no warnings or summary")


def _run_check(args: argparse.Namespace) -> int:
    return check(args.config, sglang_help=args.sglang_help, quiet=args.quiet)


def check(explicit: str | None, *, sglang_help: bool = False, quiet: bool = False,
          out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate a fleet file like ``nginx -t``: every problem on stderr as
    ``path: reason``, warnings as ``warning: path: reason``; exit 1 on any problem,
    else a short summary on stdout and exit 0."""
    out = out or sys.stdout
    err = err or sys.stderr
    path = fleet_config.config_path(explicit)
    catalogue = None
    if sglang_help:
        catalogue = _installed_catalogue(path, err)
    try:
        cfg = fleet_config.load_config(path, catalogue=catalogue)
    except fleet_config.ConfigError as e:
        missing = len(e.problems) == 1 and e.problems[0].reason == "no such file"
        if missing:
            print(f"embedops: no fleet file at {path}", file=err)
            if explicit is None:
                print(f"embedops: pass --config FILE, set ${fleet_config.ENV_CONFIG}, or copy "
                      "console/fleet.example.toml (real SGLang) or console/fleet.sim.toml "
                      "(simulated workers) to ./fleet.toml", file=err)
            return 1
        for p in e.problems:
            print(str(p), file=err)
        if not quiet:
            for w in e.warnings:
                print(f"warning: {w}", file=err)
        n = len(e.problems)
        print(f"embedops: {path}: {n} problem{'s' if n != 1 else ''}; configuration test failed",
              file=err)
        return 1
    if not quiet:
        for w in cfg.warnings:
            print(f"warning: {w}", file=err)
        print(summary(cfg), file=out)
        print(f"embedops: {path}: configuration test is successful", file=out)
    return 0


def _installed_catalogue(path: Path, err: TextIO) -> FlagCatalogue | None:
    """Read the installed SGLang's flags (cached), using the file's [sglang] section
    when it parses; None to let `load_config` choose."""
    from backends.sglang import load_catalogue

    try:
        cfg = fleet_config.load_config(path)
    except fleet_config.ConfigError:
        return None  # the real check below reports why
    if cfg.engine != Engine.SGLANG:
        return None
    print("embedops: reading the installed SGLang's --help (this imports SGLang)...", file=err)
    cat = load_catalogue(cfg.state_path, python=cfg.python, env=dict(cfg.sglang.env) or None,
                         fallback_version=cfg.sglang.version)
    print(f"embedops: flag catalogue: {cat.note}", file=err)
    return cat


def summary(cfg: fleet_config.FleetConfig) -> str:
    """A few lines describing a valid fleet."""
    by_gpu: dict[str, list[str]] = {}
    for w in cfg.workers:
        by_gpu.setdefault("-" if w.gpu is None else str(w.gpu), []).append(f"{w.name}:{w.port}")
    gpus = "; ".join(f"GPU {g}: {', '.join(names)}" for g, names in sorted(by_gpu.items()))
    b = cfg.balancer
    balancer = "none (clients call workers directly)" if b.kind == "none" else (
        f"{b.kind} on {b.host}:{b.port}")
    engine = cfg.engine.value
    if cfg.catalogue is not None:
        engine += f" ({cfg.catalogue.note})"
    n = len(cfg.workers)
    return "\n".join([
        f"fleet {cfg.name}: {n} worker{'s' if n != 1 else ''}, model {cfg.model.path}",
        f"engine: {engine}",
        f"workers: {gpus}",
        f"balancer: {balancer}",
        f"alert rules: {', '.join(r.name for r in cfg.alerts) or 'none'}",
    ])


# ---- the table ----------------------------------------------------------------------

SUBCOMMANDS: list[Subcommand] = [
    Subcommand("check", "validate the fleet file and exit (like nginx -t)", _add_check,
               _run_check),
]


def _fleet_commands() -> list[Subcommand]:
    from console import commands

    def guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: commands.run_guarded(run, args)

    return [Subcommand(name, help_, add, guarded(run))
            for name, help_, add, run in commands.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    """The `embedops` argument parser with every subcommand of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="embedops",
        description="Operations console for fleets of SGLang embedding workers. "
                    "Without a COMMAND, opens the console (`embedops console`).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in [*SUBCOMMANDS, *_fleet_commands()]:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _default_to_console(argv: list[str]) -> list[str]:
    """Plain ``embedops`` (options allowed, e.g. ``embedops -c fleet.toml``) opens the
    console; ``--help`` and named subcommands are left alone."""
    from console import commands

    names = {c.name for c in SUBCOMMANDS} | {row[0] for row in commands.COMMANDS}
    if any(a in names or a in ("-h", "--help") for a in argv):
        return argv
    return ["console", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `embedops` console script."""
    parser = build_parser()
    args = parser.parse_args(_default_to_console(list(sys.argv[1:] if argv is None else argv)))
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `embedops status | head`: the reader left; no traceback, and no second error
        # when the interpreter flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
