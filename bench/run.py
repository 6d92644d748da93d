"""Throughput, latency and memory of django-reliable-mail against the alternatives.

    pip install -e ".[bench]"          # django-post_office, django-mailer
    apt-get install postfix            # for smtp-sink (no Postfix instance is started)
    python bench/run.py                # full run: SQLite (Django's default rollback
                                       # journal), SQLite in WAL mode, PostgreSQL
    python bench/run.py --quick        # a smaller run, under 3 minutes

Systems, measured in the same run and alternated run by run:
- ``rmail_queue``: this app in queue mode; the send phase is drained by the worker code
  path (claim, send over reused parallel connections with pipelining, record attempts with
  transcripts), the SMTP side in the worker's helper process, started beforehand as a
  running worker has it;
- ``rmail_immediate``: this app sending inline from each ``send_mail()``;
- ``django_smtp``: Django's SMTP backend on one connection (no persistence at all);
- ``post_office``, ``mailer``: django-post_office and django-mailer (queue, then send);
- ``raw_aiosmtplib``: pre-built bytes over the same number of connections, no database
  (the efficiency ceiling).

Every system gets the same database settings. ``sqlite-wal`` is SQLite with
``journal_mode=WAL`` and ``synchronous=NORMAL``, a common production setup: there a commit
costs tens of microseconds instead of a durable journal's millisecond, so the systems' own
work shows instead of the disk's.

The sink is Postfix's ``smtp-sink`` (C); aiosmtpd would measure itself. The 25 ms scenario
puts a delaying TCP proxy in front of it. Each measurement runs in a fresh process on a fresh
database. Results: a Markdown table in ``bench/RESULTS.md``; the last line of stdout is one
JSON object with the headline ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = [
    "rmail_queue",
    "rmail_immediate",
    "django_smtp",
    "post_office",
    "mailer",
    "raw_aiosmtplib",
]
BODY = ("Thank you for your order. " * 80)[:2000]


# -- the worker side: one system, one phase set, in its own process ---------------------------


def worker(system: str, count: int) -> dict:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.core.management import call_command

    if os.environ.get("BENCH_MIGRATE") == "1":
        call_command("migrate", verbosity=0)
    runner = globals()[f"run_{system}"]
    return runner(count)


def _send_mail(i: int):
    from django.core.mail import send_mail

    send_mail(f"Order {i}", BODY, "shop@example.com", [f"customer{i}@example.com"])


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def run_rmail_queue(count: int) -> dict:
    from django.test import override_settings

    from django_reliable_mail.models import OutboundMessage

    with override_settings(EMAIL_BACKEND="django_reliable_mail.backends.EmailBackend"):
        from django_q.conf import Conf

        Conf.SYNC = False  # the wake-up goes to the ORM broker; no cluster runs here
        enqueue, _ = _timed(lambda: [_send_mail(i) for i in range(count)])

    startup = _start_the_smtp_helper()
    send, _ = _timed(_drain_as_the_worker_does)
    assert OutboundMessage.objects.filter(status="sent").count() == count
    return {"enqueue": enqueue, "send": send, "e2e": enqueue + send, "helper_startup": startup}


def _start_the_smtp_helper() -> float:
    """A running worker keeps its SMTP helper process from its first batch on; this fresh
    process starts it before the send phase is timed, and reports how long that took."""
    from django_reliable_mail.conf import get_config
    from django_reliable_mail.delivery.sending import _helper_wanted
    from django_reliable_mail.smtp.helper import shared_helper

    if not _helper_wanted(get_config(), streaming=True):
        return 0.0
    started = time.perf_counter()
    if not shared_helper().wait_ready():
        raise RuntimeError("the SMTP helper process did not start")
    return time.perf_counter() - started


def _drain_as_the_worker_does() -> None:
    """What a django-q2 worker runs when woken: the coalesced wake-up task, until nothing
    is due (its fan-out queues wake-ups for other workers; none runs here)."""
    from django.utils import timezone

    from django_reliable_mail import delivery, tasks

    while delivery.due_messages(now=timezone.now()).exists():
        tasks.deliver_pending()


def run_rmail_immediate(count: int) -> dict:
    from django.conf import settings
    from django.test import override_settings

    from django_reliable_mail.models import OutboundMessage

    inline = {**settings.RELIABLE_MAIL, "MODE": "immediate"}
    with override_settings(
        RELIABLE_MAIL=inline, EMAIL_BACKEND="django_reliable_mail.backends.EmailBackend"
    ):
        e2e, _ = _timed(lambda: [_send_mail(i) for i in range(count)])
    assert OutboundMessage.objects.filter(status="sent").count() == count
    return {"e2e": e2e}


def run_django_smtp(count: int) -> dict:
    from django.core.mail import EmailMessage, get_connection

    def send():
        connection = get_connection("django.core.mail.backends.smtp.EmailBackend")
        messages = [
            EmailMessage(f"Order {i}", BODY, "shop@example.com", [f"customer{i}@example.com"])
            for i in range(count)
        ]
        return connection.send_messages(messages)

    seconds, sent = _timed(send)
    assert sent == count
    return {"send": seconds, "e2e": seconds}


def run_post_office(count: int) -> dict:
    from post_office import mail
    from post_office.models import Email

    def enqueue():
        for i in range(count):
            mail.send(
                [f"customer{i}@example.com"], "shop@example.com", subject=f"Order {i}", message=BODY
            )

    def drain():
        while True:
            sent, failed, requeued = mail.send_queued()
            if not (sent or failed or requeued):
                return

    enqueue_s, _ = _timed(enqueue)
    send_s, _ = _timed(drain)
    assert Email.objects.filter(status=0).count() == count  # STATUS.sent
    return {"enqueue": enqueue_s, "send": send_s, "e2e": enqueue_s + send_s}


def run_mailer(count: int) -> dict:
    import mailer
    from mailer import engine
    from mailer.models import MessageLog

    enqueue_s, _ = _timed(
        lambda: [
            mailer.send_mail(f"Order {i}", BODY, "shop@example.com", [f"customer{i}@example.com"])
            for i in range(count)
        ]
    )
    send_s, _ = _timed(engine.send_all)
    assert MessageLog.objects.count() == count
    return {"enqueue": enqueue_s, "send": send_s, "e2e": enqueue_s + send_s}


def run_raw_aiosmtplib(count: int) -> dict:
    import asyncio

    import aiosmtplib
    from django.conf import settings
    from django.core.mail import EmailMessage

    payloads = [
        EmailMessage(f"Order {i}", BODY, "shop@example.com", [f"customer{i}@example.com"])
        .message()
        .as_bytes(linesep="\r\n")
        for i in range(count)
    ]

    async def connection(share):
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=settings.SMTP_PORT, start_tls=False, timeout=60
        ) as smtp:
            for i, data in share:
                await smtp.sendmail("shop@example.com", [f"customer{i}@example.com"], data)

    async def main():
        shares = [
            list(enumerate(payloads))[c :: settings.CONNECTIONS]
            for c in range(settings.CONNECTIONS)
        ]
        await asyncio.gather(*(connection(share) for share in shares))

    seconds, _ = _timed(asyncio.run, main())
    return {"send": seconds, "e2e": seconds}


def run_memory(count: int) -> dict:
    """Queue ``count`` messages in bulk, then drain them with the worker; peak RSS."""
    import resource

    from django.core.mail import EmailMessage

    from django_reliable_mail import delivery
    from django_reliable_mail.conf import get_config
    from django_reliable_mail.models import OutboundMessage

    config = get_config()
    chunk = 1000
    for start in range(0, count, chunk):
        messages = [
            EmailMessage(f"Order {i}", BODY, "shop@example.com", [f"customer{i}@example.com"])
            for i in range(start, min(start + chunk, count))
        ]
        delivery.enqueue([delivery.prepare(m, config=config, provider=None) for m in messages])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    _drain_as_the_worker_does()
    assert OutboundMessage.objects.filter(status="sent").count() == count
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    helper = _helper_peak_rss_mib()
    return {
        "drain_seconds": seconds,
        "rss_before_drain_mib": before,
        # The worker's process and its SMTP helper process together.
        "peak_rss_mib": peak + helper,
        "helper_peak_rss_mib": helper,
    }


def _helper_peak_rss_mib() -> float:
    """Peak RSS of the worker's SMTP helper process, if it started one (Linux)."""
    from django_reliable_mail.smtp import helper

    if helper._shared is None:
        return 0.0
    status = Path(f"/proc/{helper._shared.process.pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


def run_enqueue_latency(count: int) -> dict:
    """One ``send_mail()`` in a transaction, as a request would do it; interleaved with the
    same call through django-post_office and with the floor under both: a transaction that
    inserts one tiny row and commits (the database's durable commit alone)."""
    from django.db import connection, transaction
    from django.test import override_settings
    from django_q.conf import Conf
    from post_office import mail

    Conf.SYNC = False
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_commit_floor (n integer)")

    def floor(i):
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_commit_floor (n) VALUES (%s)", [i])

    def post_office(i):
        mail.send([f"customer{i}@example.com"], "shop@example.com", subject="x", message=BODY)

    calls = {"rmail": _send_mail, "post_office": post_office, "floor": floor}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    with override_settings(EMAIL_BACKEND="django_reliable_mail.backends.EmailBackend"):
        for i in range(count):
            for name, call in calls.items():
                start = time.perf_counter()
                with transaction.atomic():
                    call(i)
                samples[name].append((time.perf_counter() - start) * 1000)
    for values in samples.values():
        values.sort()
    result = {}
    for name, values in samples.items():
        prefix = "" if name == "rmail" else f"{name}_"
        result[f"{prefix}p50_ms"] = values[len(values) // 2]
        result[f"{prefix}p99_ms"] = values[int(len(values) * 0.99)]
    return result


# -- the orchestrating side -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Databases:
    """A migrated template per engine; every measurement gets a fresh copy of it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.sqlite_template = workdir / "template.sqlite3"
        self.pg_template = "rmail_bench_template"
        self.counter = 0

    def prepare(self, engine: str, env: dict) -> None:
        if engine == "sqlite":
            run_worker(
                "noop",
                0,
                {
                    **env,
                    "BENCH_DB_ENGINE": "sqlite",
                    "BENCH_DB": str(self.sqlite_template),
                    "BENCH_MIGRATE": "1",
                },
            )
        else:
            self._psql(f'DROP DATABASE IF EXISTS "{self.pg_template}"')
            self._psql(f'CREATE DATABASE "{self.pg_template}"')
            run_worker(
                "noop",
                0,
                {
                    **env,
                    "BENCH_DB_ENGINE": "postgres",
                    "BENCH_DB": self.pg_template,
                    "BENCH_MIGRATE": "1",
                },
            )

    def fresh(self, engine: str) -> str:
        self.counter += 1
        if engine == "sqlite":
            path = self.workdir / f"run{self.counter}.sqlite3"
            shutil.copy(self.sqlite_template, path)
            return str(path)
        name = f"rmail_bench_{self.counter}"
        self._psql(f'DROP DATABASE IF EXISTS "{name}"')
        self._psql(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_template}"')
        return name

    def drop(self, engine: str, name: str) -> None:
        if engine == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(name + suffix).unlink(missing_ok=True)
        else:
            self._psql(f'DROP DATABASE IF EXISTS "{name}"')

    @staticmethod
    def _psql(sql: str) -> None:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql],
            check=True,
            capture_output=True,
        )


def run_worker(system: str, count: int, env: dict) -> dict:
    if system == "noop":
        code = "import bench.run as r; r.worker_noop()"
    else:
        code = f"import bench.run as r, json; print(json.dumps(r.worker({system!r}, {count})))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]) if system != "noop" else {}


def worker_noop() -> None:
    worker_setup_only()


def worker_setup_only() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def start_sink(port: int) -> subprocess.Popen:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        raise SystemExit("smtp-sink not found: apt-get install postfix (no instance is started)")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "1024"])
    wait_port(port)
    return proc


def summarise(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description="django-reliable-mail benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer messages and runs")
    parser.add_argument("--messages", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--latency-connections",
        type=int,
        default=16,
        help="this app's MAX_CONNECTIONS behind the 25 ms proxy (far-away providers are "
        "where parallel connections pay)",
    )
    parser.add_argument(
        "--engines",
        default=None,
        help="sqlite (Django's default rollback journal), sqlite-wal (WAL with "
        "synchronous=NORMAL, for every system alike), postgres",
    )
    parser.add_argument("--drain", type=int, help="messages for the memory drain")
    parser.add_argument(
        "--only",
        help="measure just these systems (comma-separated; no "
        "ratios, latency or memory): for profiling",
    )
    args = parser.parse_args()
    count = args.messages or (1000 if args.quick else 2000)
    runs = args.runs or (1 if args.quick else 3)
    engines = (args.engines or ("sqlite" if args.quick else "sqlite,sqlite-wal,postgres")).split(
        ","
    )
    drain = args.drain or (20_000 if args.quick else 100_000)
    latency_count = 200 if args.quick else 500

    workdir = Path(tempfile.mkdtemp(prefix="rmail-bench-"))
    sink_port = free_port()
    proxy_port = free_port()
    sink = start_sink(sink_port)
    proxy = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "latency_proxy.py"),
            str(proxy_port),
            str(sink_port),
            "25",
        ]
    )
    wait_port(proxy_port)
    base_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "BENCH_CONNECTIONS": str(args.connections),
        "PYTHONPATH": str(ROOT),
    }
    databases = Databases(workdir)
    rates: dict[tuple, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    extra: dict[str, float] = {}
    startups: list[float] = []
    try:
        for engine in engines:
            database = "postgres" if engine == "postgres" else "sqlite"
            databases.prepare(database, {**base_env, "BENCH_SMTP_PORT": str(sink_port)})

            def measure(system, n, port, database=database, engine=engine, connections=None):
                name = databases.fresh(database)
                env = {
                    **base_env,
                    "BENCH_DB_ENGINE": database,
                    "BENCH_DB": name,
                    "BENCH_SMTP_PORT": str(port),
                    # The template stays in rollback-journal mode (a copied WAL file could
                    # leave pages behind); each connection switches the copy to WAL.
                    "BENCH_SQLITE_WAL": "1" if engine == "sqlite-wal" else "0",
                }
                if connections:
                    env["BENCH_CONNECTIONS"] = str(connections)
                try:
                    timing = run_worker(system, n, env)
                finally:
                    databases.drop(database, name)
                if "helper_startup" in timing:  # once per worker process, not a phase
                    startups.append(timing.pop("helper_startup"))
                return timing

            if args.only:
                for system in args.only.split(","):
                    timing = measure(system, count, sink_port)
                    print(
                        f"{system}: "
                        + ", ".join(f"{p} {count / s:,.0f}/s" for p, s in timing.items())
                    )
                continue
            for run in range(runs):
                order = SYSTEMS[run % len(SYSTEMS) :] + SYSTEMS[: run % len(SYSTEMS)]
                this_run = {}
                for system in order:
                    timing = measure(system, count, sink_port)
                    this_run[system] = timing
                    for phase, seconds in timing.items():
                        rates.setdefault((engine, system, phase), []).append(count / seconds)
                    print(
                        f"[{engine} run {run + 1}] {system}: "
                        + ", ".join(f"{p} {count / s:,.0f}/s" for p, s in timing.items()),
                        file=sys.stderr,
                    )
                rq, po, raw = (
                    this_run["rmail_queue"],
                    this_run["post_office"],
                    this_run["raw_aiosmtplib"],
                )
                ratios.setdefault(f"{engine}_send_vs_post_office", []).append(
                    po["send"] / rq["send"]
                )
                ratios.setdefault(f"{engine}_e2e_vs_post_office", []).append(po["e2e"] / rq["e2e"])
                ratios.setdefault(f"{engine}_send_vs_raw_aiosmtplib", []).append(
                    raw["send"] / rq["send"]
                )
                if engine == "sqlite-wal":
                    continue  # round trips, not the journal, decide the latency scenario
                # 25 ms round trips: the same sink behind the delaying proxy.
                slow = {
                    "rmail_queue": measure(
                        "rmail_queue",
                        latency_count,
                        proxy_port,
                        connections=args.latency_connections,
                    ),
                    "post_office": measure("post_office", latency_count, proxy_port),
                }
                for system, timing in slow.items():
                    rates.setdefault((engine, f"{system}@25ms", "send"), []).append(
                        latency_count / timing["send"]
                    )
                ratios.setdefault(f"{engine}_latency25_vs_post_office", []).append(
                    slow["post_office"]["send"] / slow["rmail_queue"]["send"]
                )
            latency = measure("enqueue_latency", 300, sink_port)
            extra[f"{engine}_enqueue_p50_ms"] = latency["p50_ms"]
            extra[f"{engine}_enqueue_p99_ms"] = latency["p99_ms"]
            extra[f"{engine}_post_office_enqueue_p50_ms"] = latency["post_office_p50_ms"]
            extra[f"{engine}_commit_floor_p50_ms"] = latency["floor_p50_ms"]
            if engine == "sqlite":
                memory = measure("memory", drain, sink_port)
                extra["drain_messages"] = drain
                extra["drain_peak_rss_mib"] = memory["peak_rss_mib"]
                extra["drain_helper_peak_rss_mib"] = memory["helper_peak_rss_mib"]
                extra["drain_rate"] = drain / memory["drain_seconds"]
                half = measure("memory", drain // 4, sink_port)
                extra["drain_quarter_peak_rss_mib"] = half["peak_rss_mib"]
    finally:
        proxy.terminate()
        sink.terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    if args.only:
        return
    # The pipelined bound: two round trips per message on each connection (MAIL/RCPT/DATA,
    # then the body). Here the next message's commands ride with the previous body, so a
    # reused connection needs about one, and the figure can pass 100%.
    bound = args.latency_connections / (2 * 0.025)
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; sink: Postfix smtp-sink on loopback; "
        f"{count} messages of ~2 KB per run, {runs} run(s), {args.connections} connections; "
        f"run by `python bench/run.py{' --quick' if args.quick else ''}`.",
        "",
        "Messages per second, median (min-max):",
        "",
        "| database | system | enqueue | send | end to end |",
        "|---|---|---|---|---|",
    ]
    for engine in engines:
        for system in [*SYSTEMS, "rmail_queue@25ms", "post_office@25ms"]:
            cells = [
                summarise(rates.get((engine, system, phase), []))
                for phase in ("enqueue", "send", "e2e")
            ]
            if any(c != "-" for c in cells):
                lines.append(f"| {engine} | {system} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios, taken run by run (median, min-max):",
        "",
        "| ratio | median | range |",
        "|---|---|---|",
    ]
    for name, values in ratios.items():
        lines.append(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |"
        )
    # The latency scenario runs on the first setting that has one (sqlite-wal skips it).
    slow_engine = next((e for e in engines if (e, "rmail_queue@25ms", "send") in rates), None)
    slow_rate = (
        statistics.median(rates[slow_engine, "rmail_queue@25ms", "send"]) if slow_engine else 0
    )
    if slow_engine:
        lines += [
            "",
            f"At 25 ms RTT ({slow_engine}) the round-trip bound for {args.latency_connections} "
            f"pipelined connections (2 round trips a message) is {bound:.0f} msg/s; reached "
            f"{slow_rate:.0f} ({100 * slow_rate / bound:.0f}%; a reused connection needs about "
            "one round trip a message here, as the next message's commands follow the "
            "previous body).",
        ]
    if startups:
        lines += [
            "",
            "This app's send phase is timed with its worker's SMTP helper process already "
            "running, as in a worker that has sent a batch before (it keeps the helper); "
            f"starting it took {1000 * statistics.median(startups):.0f} ms (median), once "
            "per worker process.",
        ]
    lines.append("")
    for key, value in extra.items():
        lines.append(f"- {key}: {value:,.2f}")
    (ROOT / "bench" / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    first = engines[0]
    headline = {
        "send_ratio_vs_post_office": statistics.median(ratios[f"{first}_send_vs_post_office"]),
        "e2e_ratio_vs_post_office": statistics.median(ratios[f"{first}_e2e_vs_post_office"]),
        "send_ratio_vs_raw_aiosmtplib": statistics.median(
            ratios[f"{first}_send_vs_raw_aiosmtplib"]
        ),
        "latency25_ratio_vs_post_office": statistics.median(
            ratios[f"{slow_engine}_latency25_vs_post_office"]
        )
        if slow_engine
        else None,
        "latency25_fraction_of_bound": slow_rate / bound if slow_engine else None,
        "enqueue_p50_ms": extra[f"{first}_enqueue_p50_ms"],
        "enqueue_p99_ms": extra[f"{first}_enqueue_p99_ms"],
        # What bounds it: the same call through post_office, and a bare one-row commit.
        "enqueue_p50_ms_post_office": extra[f"{first}_post_office_enqueue_p50_ms"],
        "enqueue_p50_ms_commit_floor": extra[f"{first}_commit_floor_p50_ms"],
        "drain_messages": extra.get("drain_messages"),
        "drain_100k_peak_rss_mib": extra.get("drain_peak_rss_mib") if drain >= 100_000 else None,
        "drain_peak_rss_mib": extra.get("drain_peak_rss_mib"),
        "helper_startup_ms": 1000 * statistics.median(startups) if startups else None,
    }
    if "postgres" in engines:
        headline["enqueue_p50_ms_postgres"] = extra.get("postgres_enqueue_p50_ms")
        headline["enqueue_p50_ms_postgres_commit_floor"] = extra.get("postgres_commit_floor_p50_ms")
    if "sqlite-wal" in engines:
        for name in ("send_vs_post_office", "e2e_vs_post_office", "send_vs_raw_aiosmtplib"):
            headline[f"sqlite_wal_{name}"] = statistics.median(ratios[f"sqlite-wal_{name}"])
        headline["enqueue_p50_ms_sqlite_wal"] = extra.get("sqlite-wal_enqueue_p50_ms")
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
