"""mlops-bot: serve, check-config, audit, sandbox.

Exit codes: 0 ok, 1 a check failed (audit verify, check-config --online, a sandbox script error), 2 a bad config or
bad usage.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Config, ConfigError, Secrets, load_config

if TYPE_CHECKING:
    from bot.replication import Replica

DEFAULT_CONFIG = "mlops-bot.yaml"


def _config_path(args: argparse.Namespace) -> str:
    return getattr(args, "file", None) or args.config or os.environ.get("MLOPS_BOT_CONFIG") or DEFAULT_CONFIG


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(_config_path(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"{_config_path(args)}: ok ({len(config.models)} models, {len(config.datagen.jobs)} datagen jobs, "
          f"{len(config.monitors)} monitors, {len(config.oncall.rotations)} rotations)")
    for name, job in config.datagen.jobs.items():  # valid, but a setting nobody would guess is not the one used
        for line in job.overrides(name):
            print(f"{_config_path(args)}: warning: {line}", file=sys.stderr)
    if not args.online:
        return 0
    from bot.online import online_problems

    problems = asyncio.run(online_problems(config, _config_path(args), Secrets.from_env()))
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{_config_path(args)}: online: " + (f"{len(problems)} problems" if problems else
          f"ok ({len(config.pipelines.airflow.dags)} DAGs found in Airflow, {len(config.monitors)} monitors runnable)"))
    return 1 if problems else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bot.replication import Replica, ReplicaError, Replicator, wait_for_lease
    from bot.replication.lease import instance_id
    from bot.runtime import Runtime
    from bot.serve import serve

    config = _load(args)
    secrets = Secrets.from_env()
    missing = [name for name, value in (("SLACK_BOT_TOKEN", secrets.slack_bot_token),
                                        ("SLACK_SIGNING_SECRET", secrets.slack_signing_secret)) if not value]
    if missing:
        print(f"mlops-bot serve: set {' and '.join(missing)} in the environment (see README: Slack app)", file=sys.stderr)
        return 2
    replica = Replica.from_config(config)
    try:
        restored = replica is not None and _restore(replica)

        async def run() -> None:
            if replica is not None:  # wait as a standby while another instance holds the lease
                await wait_for_lease(replica, instance_id(), config.store_lease_s, host=args.host, port=args.port,
                                     restored=restored)
            await serve(Runtime(config, secrets, replicator=replica and Replicator(replica)), host=args.host, port=args.port)

        return _with_writable_store(config.store, lambda: asyncio.run(run()))
    except ReplicaError as exc:
        print(f"mlops-bot serve: {exc}", file=sys.stderr)
        return 2


def _restore(replica: Replica) -> bool:
    """Before the store is opened: restore it from the replica when it is missing and the replica has it."""
    replica.check_reachable()
    if not replica.restore():
        return False
    print(f"mlops-bot: restored {replica.db} from {replica.url}", flush=True)
    return True


def _with_writable_store(path: str | Path, run) -> int:
    """Start only on a store that takes a committed write: a read-only or full one is one line and exit 2,
    not a traceback from the first job that writes."""
    from bot.store import StoreUnwritable, unwritable_reason

    store_log = logging.getLogger("bot.store")
    store_log.disabled = True  # the line below says it; the store's own log line would only repeat it
    try:
        reason = unwritable_reason(path)
    finally:
        store_log.disabled = False
    if reason is not None:
        print(f"mlops-bot: cannot write the store {path}: {reason}", file=sys.stderr)
        return 2
    try:
        return run() or 0
    except StoreUnwritable as exc:  # it went between the check and the start's own first writes
        print(f"mlops-bot: cannot write the store {exc.path}: {exc.reason}", file=sys.stderr)
        return 2


SANDBOX_STATE = Path(".mlops-sandbox")  # the sandbox's default state directory (bot.sandbox.session)


def _store_path(args: argparse.Namespace, config: Config) -> Path:
    """The config's store, or a sandbox's with --state-dir (alone: the sandbox's default directory)."""
    state = getattr(args, "state_dir", None)
    return (state / "mlops-bot.db").resolve() if state else Path(config.store)


def _store(args: argparse.Namespace):
    """The store to read; one that does not exist is said and exit 2, rather than created empty."""
    from bot.store import Store

    path = _store_path(args, _load(args))
    if not path.exists():
        hint = "" if getattr(args, "state_dir", None) else " (a sandbox's: add --state-dir DIR)"
        print(f"mlops-bot: no store at {path}{hint}", file=sys.stderr)
        raise SystemExit(2)
    return Store(path)


def cmd_audit_tail(args: argparse.Namespace) -> int:
    for row in _store(args).actions(limit=args.n, model=args.model):
        where = "/".join(x for x in (row["model"], row["env"], row["version"]) if x)
        print(f"{row['id']:>6} {row['ts'][:19]} {row['actor']:<10} {row['verb']:<22} {row['status']:<10} {where} "
              f"{json.dumps(row['detail'], sort_keys=True)}")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    since = datetime.combine(args.since, datetime.min.time(), tzinfo=UTC)
    rows = _store(args).actions(since=since)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "detail": json.dumps(row["detail"], sort_keys=True)})
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    broken = store.verify_chain()
    if broken:
        print(f"audit log broken at row {broken.row_id}: {broken.reason}")
        return 1
    count = store.conn.execute("SELECT count(*) FROM actions").fetchone()[0]
    print(f"audit log intact: {count} rows, hash chain verified")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from bot.sandbox.session import run_sandbox, sandbox_config

    config = _load(args)
    state = (args.state_dir or SANDBOX_STATE).resolve()
    state.mkdir(parents=True, exist_ok=True)

    def run() -> int:
        try:
            return asyncio.run(run_sandbox(_config_path(args), script=args.script, state_dir=state,
                                           log_level=args.log_level, verbose=args.verbose))
        except KeyboardInterrupt:  # Ctrl-C: the servers were stopped as the session unwound
            return 130

    return _with_writable_store(sandbox_config(config, state, None).store, run)


def _datagen_job(config: Config, given: str | None) -> str:
    """The datagen job or monitor named by --job; unnamed, the only datagen job."""
    jobs = {**config.datagen.jobs, **config.monitors}
    if given is None and len(config.datagen.jobs) == 1:
        return next(iter(config.datagen.jobs))
    if given not in jobs:
        print(f"mlops-bot datagen: name the job with --job; jobs: {', '.join(sorted(jobs)) or 'none'}", file=sys.stderr)
        raise SystemExit(2)
    return given


def cmd_datagen_ingest(args: argparse.Namespace) -> int:
    from bot.monitors.datagen import ReportError
    from bot.monitors.history import load_history, parser_of, save_record
    from bot.monitors.rules import evaluate
    from bot.store import Store, utcnow

    config = _load(args)
    job = _datagen_job(config, args.job)
    settings = {**config.datagen.jobs, **config.monitors}[job]
    try:
        run_date = args.date or date.fromisoformat(args.record.stem)
    except ValueError:
        print(f"mlops-bot datagen ingest: {args.record.name} is not named YYYY-MM-DD.json; give --date", file=sys.stderr)
        return 2
    try:
        text = args.record.read_text()
        parser_of(settings)(text, run_date=run_date)
    except (OSError, ReportError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        print(f"datagen report for {run_date} unreadable: {reason} ({args.record})", file=sys.stderr)
        return 1
    store = Store(_store_path(args, config))
    stored = save_record(store, job, run_date, text, str(args.record.resolve()), actor=os.environ.get("USER") or "cli",
                         at=utcnow())
    history, expected = load_history(store, job, parser_of(settings))
    breaches = evaluate(settings.rules, history, run_date, expected=expected, lookback=settings.baseline_lookback_days)
    print(f"{job} {run_date}: {'stored' if stored else 'already stored'}; {len(breaches)} breaches")
    for breach in breaches:
        print(f"  {breach.severity:<4} {breach.rule_id}: {breach.message}")
    if stored:
        print("the running bot posts its summary and alerts at its next poll")
    store.close()
    return 0


def cmd_datagen_backtest(args: argparse.Namespace) -> int:
    from bot.monitors.history import load_history, parser_of
    from bot.monitors.rules import backtest

    config = _load(args)
    job = _datagen_job(config, args.job)
    store = _store(args)
    settings = {**config.datagen.jobs, **config.monitors}[job]
    history, expected = load_history(store, job, parser_of(settings))
    store.close()
    fired = backtest(settings.rules, history, args.days, expected=expected, lookback=settings.baseline_lookback_days)
    span = min(args.days, (max(history) - min(history)).days + 1) if history else 0
    print(f"{job}: {len(history)} reports; days each rule would have fired in the last {span} days")
    for rule_id, days in fired.items():
        print(f"  {rule_id:<24}{days:>4}" + (f"  ({days / span:.0%})" if span else ""))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlops-bot", description="The Slack bot an ML team runs its production loop from.")
    p.add_argument("--config", help=f"config file (default: $MLOPS_BOT_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--log-level", default=os.environ.get("MLOPS_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the bot (Socket Mode if SLACK_APP_TOKEN is set, else HTTP)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config file; exit 2 with one line per problem")
    c.add_argument("file", nargs="?")
    c.add_argument("--online", action="store_true", help="also check that each watched DAG exists in Airflow and each "
                   "monitor's command can run; exit 1 with one line per problem")
    c.set_defaults(func=cmd_check_config)

    # Beside a sandbox, read its store: --state-dir DIR, or --state-dir alone for the sandbox's default.
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", type=Path, nargs="?", const=SANDBOX_STATE,
                       help=f"read a sandbox's store in DIR (default {SANDBOX_STATE}) instead of the config's")

    a = sub.add_parser("audit", help="read and verify the audit log").add_subparsers(dest="audit", required=True)
    t = a.add_parser("tail", help="the newest audit rows", parents=[state])
    t.add_argument("-n", type=int, default=20)
    t.add_argument("--model")
    t.set_defaults(func=cmd_audit_tail)
    e = a.add_parser("export", help="audit rows since a date as CSV or JSON", parents=[state])
    e.add_argument("--since", type=date.fromisoformat, required=True, help="YYYY-MM-DD (UTC)")
    e.add_argument("--format", choices=["csv", "json"], default="csv")
    e.set_defaults(func=cmd_audit_export)
    v = a.add_parser("verify", help="check the hash chain; exit 1 at the first bad row", parents=[state])
    v.set_defaults(func=cmd_audit_verify)

    d = sub.add_parser("datagen", help="datagen monitoring records").add_subparsers(dest="datagen", required=True)
    i = d.add_parser("ingest", help="store a monitoring record; the running bot posts it at its next poll",
                     parents=[state])
    i.add_argument("record", type=Path, help="the monitoring record (JSON)")
    i.add_argument("--job", help="the datagen job (default: the only one)")
    i.add_argument("--date", type=date.fromisoformat, help="run date (default: the file name, YYYY-MM-DD.json)")
    i.set_defaults(func=cmd_datagen_ingest)
    k = d.add_parser("backtest", help="how often each rule would have fired over the stored history",
                     parents=[state])
    k.add_argument("--days", type=int, default=90)
    k.add_argument("--job", help="the datagen job (default: the only one)")
    k.set_defaults(func=cmd_datagen_backtest)

    b = sub.add_parser("sandbox", help="the whole bot against a local Slack stand-in, in this terminal")
    b.add_argument("--script", type=Path, help="run the inputs in FILE instead of reading the terminal")
    b.add_argument("--state-dir", type=Path, help=f"where the sandbox keeps its store, repositories and log "
                                                  f"(default {SANDBOX_STATE})")
    b.add_argument("--verbose", action="store_true", help="show the log in the terminal too, not warnings only")
    b.set_defaults(func=cmd_sandbox)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
