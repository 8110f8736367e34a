"""A running service's storage, through app.client: ``hotdog storage`` (what DATA_DIR holds),
``hotdog logs JOB [--follow]`` (a job's own log), ``hotdog delete-job JOB [--files-only]``.

``--url`` / ``HOTDOG_URL`` and ``--api-key`` / ``HOTDOG_API_KEY`` as for every client command.
"""

from __future__ import annotations

import argparse
import sys

from app.cli.exit_codes import EXIT_OK
from app.cli.options import AddCommand, client_commands
from app.cli.output import emit_json
from app.client import Client


def human(n: int) -> str:
    """Bytes as a person reads them: 1.5 GiB, 312.0 KiB, 17 B."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def cmd_storage(args: argparse.Namespace) -> int:
    with _client(args) as c:
        report = c.storage(limit=args.limit)
    if args.json:
        emit_json(report)
        return EXIT_OK
    print(f"data dir: {human(report['used_bytes'])} used, {human(report['free_bytes'])} free "
          f"of {human(report['total_bytes'])}")
    for name, size in report["categories"].items():
        print(f"  {name:<12} {human(size):>10}")
    print(f"\n{'kind':<8} {'id':<32} {'size':>10}  {'name':<28} deletable")
    for it in report["biggest"]:
        print(f"{it['kind']:<8} {it['id']:<32} {human(it['bytes']):>10}  {it['name'][:28]:<28} "
              + ("yes" if it["protected"] is None else f"no: {it['protected']}"))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """The log as text; with --json one object {job_id, log} at the end (following, the
    lines go to stderr as they come)."""
    out = sys.stderr if args.json else sys.stdout
    got: list[str] = []
    with _client(args) as c:
        if not args.follow:
            got.append(c.logs(args.job_id, tail=args.tail))
            if not args.json:
                out.write(got[0])
        else:
            for text in c.follow_logs(args.job_id, tail=args.tail):
                got.append(text)
                out.write(text)
                out.flush()
    if args.json:
        emit_json({"job_id": args.job_id, "log": "".join(got)})
    return EXIT_OK


def cmd_delete_job(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.delete_job(args.job_id, files_only=args.files_only)
        job = c.job(args.job_id)
    if args.json:
        emit_json(job)
    else:
        print(f"job {args.job_id}: " + ("model files removed, the job stays listed"
                                        if args.files_only else "deleted (its history stays)"))
    return EXIT_OK


def register(command: AddCommand) -> None:
    client_command = client_commands(command)

    p = client_command("storage", cmd_storage, "what the service's data dir holds: bytes by "
                       "category, free space, the biggest datasets and jobs",
                       "examples:\n  hotdog storage\n  hotdog storage --limit 50 --json\n\n")
    p.add_argument("--limit", type=int, default=20, help="the biggest items listed (1-100)")

    p = client_command("logs", cmd_logs, "a job's log: its worker's and training process's "
                       "lines about it",
                       "examples:\n  hotdog logs JOB_ID\n  hotdog logs JOB_ID --tail 20\n"
                       "  hotdog logs JOB_ID --follow   # until the job ends\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new lines until the job ends")
    p.add_argument("--tail", type=int, default=None, help="only the last N lines")

    p = client_command("delete-job", cmd_delete_job, "delete a job's files (checkpoints, "
                       "exports, log) and hide it; its history stays",
                       "examples:\n  hotdog delete-job JOB_ID\n"
                       "  hotdog delete-job JOB_ID --files-only   # free the disk, keep it "
                       "listed\n\n")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--files-only", action="store_true",
                   help="remove its model files only; it stays listed, with its log")
