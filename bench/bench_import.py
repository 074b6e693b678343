"""CSV import/export benchmark: prints figures (not a timed test).

    .venv/bin/python bench/bench_import.py [--sizes 200000,1000000] [--database-url URL] [--profile]

Generates realistic CSV files into bench/.cache/ once (mixed case, accented names, quoted names with
commas, a `city` attribute, ~2 % invalid rows, ~0.3 % duplicates, ~1 % addresses only the full
validator can judge), then for each size imports the file into a fresh database. For the largest
size it also re-imports the same file (nothing changed: every row should be skipped cheaply); every
size is exported to a CSV file. Each import and export is followed by its floor, measured in the same
run (the database's own bulk insert of the rows the import wrote: executemany on SQLite, COPY on
PostgreSQL; a bare SELECT of the same columns through csv.writer), printed as a ratio.

Every run happens in a child process that reports its own elapsed time and peak RSS (VmHWM) plus
the peak RSS of any helper process it started (RUSAGE_CHILDREN), so the figures are those of the
importing process alone. Targets (issue 12): 1,000,000 rows imported in <= 15 s and exported in
<= 5 s, peak RSS <= 150 MB (what the import used before).

With --database-url postgresql+psycopg://… every run gets a fresh schema in that database.
With --profile the child runs under cProfile and prints its 25 most expensive functions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
import unicodedata
import uuid
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
TARGET_SECONDS_PER_MILLION = 30.0  # the earlier, end-to-end target (whatever the machine's load)
TARGET_IMPORT_PER_MILLION = 15.0   # issue 12
TARGET_EXPORT_PER_MILLION = 5.0    # issue 12
TARGET_RSS_MB = 150.0
GENERATOR_VERSION = 1  # bump when the generator changes (cached files are regenerated)

FIRST = ("Camille", "Léa", "Hugo", "Chloé", "Lucas", "Zoé", "Louis", "Inès", "Gabriel", "Jade", "Raphaël", "Anaïs",
         "Jérôme", "Hélène", "François", "Noémie", "Maëlle", "Benoît", "Cécile", "Théo", "Manon", "Nathan", "Éloïse",
         "Jo", "Björn", "José", "Ümit", "Aurélien", "Margaux", "Timothée", "Agnès", "Yanis", "Sébastien", "Clémence",
         "Olivier", "Sarah", "Thomas", "Emma", "Mohamed", "Fatou", "Pierre-Louis", "Anne-Sophie", "Jean", "Marie")
LAST = ("Martin", "Dubois", "Bernard", "Lefèvre", "Petit", "Durand", "Leroy", "Moreau", "Simon", "Laurent", "Michel",
        "Garcia", "Müller", "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Mercier",
        "N'Diaye", "O'Brien", "Le Gall", "de la Fontaine", "Nguyen", "Da Silva", "Perrin", "Morel", "Gauthier",
        "Chevalier", "Roche", "Blanc", "Guérin", "Muller", "Henry", "Roussel", "Nicolas", "Brun", "Faure")
DOMAINS = ("gmail.com", "orange.fr", "free.fr", "laposte.net", "yahoo.fr", "hotmail.com", "outlook.fr", "sfr.fr",
           "wanadoo.fr", "proton.me", "icloud.com", "example.org", "univ-lyon1.fr", "etu.univ-paris1.fr",
           "mairie-nantes.fr", "live.fr", "gmx.de", "mail.example.co.uk", "numericable.fr", "bbox.fr")
CITIES = ("Paris", "Lyon", "Marseille", "Toulouse", "Nantes", "Lille", "Bordeaux", "Strasbourg", "Rennes", "Montpellier",
          "Saint-Étienne", "Aix-en-Provence", "Besançon", "Orléans", "Nîmes", "Clermont-Ferrand", "Brest", "Genève",
          "Bruxelles", "Montréal", "Le Havre", "Villeneuve-d'Ascq", "")
INVALID = ("{local}@", "{first} {last}@{domain}", "{local}..x@{domain}", "{local}@{host}", "@{domain}", "",
           "{local}@{domain}..fr", "{local}.{domain}", "{local}@@{domain}", "{local}@-{domain}", "{local}@{domain}.",
           "{local}@localhost", "{local}@{host}.local", "{local}@[127.0.0.1]", "n/a", "{local}@{domain};{local}@{domain}")
SLOW = ("{ulocal}@{domain}", "{local}@exämple-{n}.fr", "{local}@xn--exmple-cua.fr", "{local}@{domain}.",
        '"{first} {last}"@{domain}', "{local}@{n}.{domain}", "{local}!{n}@{domain}", "{local}@{short}.{udomain}")


def ascii_fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if c.isascii() and c.isalnum()).lower()


def generate(path: Path, n: int, seed: int = 20261126) -> dict:
    """Write `n` data rows (plus a header) to `path`; returns what went in."""
    rng = random.Random(seed + n)
    counts = {"valid": 0, "invalid": 0, "duplicate": 0, "slow": 0}
    earlier: list[str] = []
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["email", "name", "language", "city"])
        for i in range(n):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            f, l = ascii_fold(first), ascii_fold(last)
            style = rng.random()
            if style < 0.45:
                local = f"{f}.{l}{i}"
            elif style < 0.6:
                local = f"{f[0]}{l}{i}"
            elif style < 0.7:
                local = f"{f}_{l}.{i}"
            elif style < 0.8:
                local = f"{f}{l}+news{i}"
            else:
                local = f"{f}-{i}"
            domain = rng.choice(DOMAINS)
            case = rng.random()
            if case < 0.08:
                local, domain = local.title(), domain.title()
            elif case < 0.11:
                local, domain = local.upper(), domain.upper()
            email = f"{local}@{domain}"
            kind = rng.random()
            values = {"local": local, "domain": domain, "first": f, "last": l, "host": domain.split(".")[0], "n": i,
                      "ulocal": f"{first.lower().replace(' ', '')}.{l}{i}", "short": f[:3], "udomain": "crème.fr"}
            if kind < 0.02:
                email = rng.choice(INVALID).format(**values)
                counts["invalid"] += 1
            elif kind < 0.023 and earlier:
                email = rng.choice(earlier).swapcase()
                counts["duplicate"] += 1
            elif kind < 0.033:
                email = rng.choice(SLOW).format(**values)
                counts["slow"] += 1
            else:
                counts["valid"] += 1
                if len(earlier) < 5000 and rng.random() < 0.01:
                    earlier.append(email)
            if rng.random() < 0.02:
                email = f"  {email} "
            name_style = rng.random()
            if name_style < 0.05:
                name = ""
            elif name_style < 0.12:
                name = f"{last.upper()}, {first}"  # comma: quoted by the writer
            elif name_style < 0.14:
                name = f'{first} "{rng.choice(("Jo", "Bibi", "Doc"))}" {last}'
            else:
                name = f"{first} {last}"
            language = rng.choices(("fr", "en", "FR", "", "de"), (75, 14, 3, 6, 2))[0]
            writer.writerow([email, name, language, rng.choice(CITIES)])
    tmp.replace(path)
    return counts


def csv_for(n: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"subscribers-{n}-v{GENERATOR_VERSION}.csv"
    if not path.is_file():
        started = time.perf_counter()
        counts = generate(path, n)
        print(f"  generated {path.relative_to(REPO)} in {time.perf_counter() - started:.1f} s: {counts}", flush=True)
    return path


# ----- the child: one measured operation ------------------------------------------------------------
def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


FLOOR_BATCH = 10_000
_TABLES = {"subscribers": ("id", "email", "email_given", "name", "language", "status", "source", "attributes",
                           "import_digest", "created_at", "updated_at", "confirmed_at", "unsubscribed_at"),
           "subscriber_events": ("id", "subscriber_id", "at", "kind", "old_status", "new_status", "source", "reason"),
           "list_members": ("list_name", "subscriber_id")}
EXPORT_FLOOR_SQL = ("SELECT email_given, name, language, status, source, created_at, confirmed_at, unsubscribed_at, '', "
                    "attributes FROM subscribers ORDER BY id")


def floor_import(store, source_url: str) -> dict:
    """The database's own bulk insert of the rows the import wrote (read from `source_url` first, not
    timed): executemany in transactions of FLOOR_BATCH rows on SQLite, COPY on PostgreSQL."""
    from mailer.store import open_store
    source = open_store(source_url)
    tables = {}
    with source.engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        text = "::text" if source.engine.dialect.name == "postgresql" else ""  # JSON as stored, for COPY
        for table, columns in _TABLES.items():
            selected = ", ".join(f"{c}{text}" if c == "attributes" else c for c in columns)
            cursor.execute(f"SELECT {selected} FROM {table} ORDER BY {columns[0]}")
            tables[table] = cursor.fetchall()
    source.close()
    started, cpu = time.perf_counter(), time.process_time()
    with store.engine.connect() as conn:
        dbapi = conn.connection.driver_connection
        sqlite = store.engine.dialect.name == "sqlite"
        for table, columns in _TABLES.items():
            rows = tables[table]
            for start in range(0, len(rows), FLOOR_BATCH):
                part = rows[start:start + FLOOR_BATCH]
                if sqlite:
                    dbapi.execute("BEGIN IMMEDIATE")
                    dbapi.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                      f"({', '.join('?' * len(columns))})", part)
                    dbapi.execute("COMMIT")
                else:
                    with dbapi.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in part:
                            copy.write_row(row)
                    dbapi.commit()
    return {"rows": len(tables["subscribers"]), "seconds": time.perf_counter() - started,
            "floor_cpu": time.process_time() - cpu}


def floor_export(store, out) -> dict:
    """A bare SELECT of the same columns (no formatting) through csv.writer."""
    started, cpu = time.perf_counter(), time.process_time()
    with store.engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        sql = EXPORT_FLOOR_SQL
        if store.engine.dialect.name == "postgresql":  # text as stored: no datetime or dict per cell in the client
            for column in ("created_at", "confirmed_at", "unsubscribed_at"):
                sql = sql.replace(f" {column},", f" {column}::text,")
            sql = sql.replace("attributes FROM", "attributes::text FROM")
        cursor.execute(sql)
        writer = csv.writer(out, lineterminator="\n")
        rows = 0
        while True:
            page = cursor.fetchmany(5000)
            if not page:
                break
            writer.writerows(page)
            rows += len(page)
    return {"rows": rows, "seconds": time.perf_counter() - started, "floor_cpu": time.process_time() - cpu}


def child(args: argparse.Namespace) -> None:
    # --implementation: the root of another checkout (e.g. `git archive HEAD~3 | tar -x -C /tmp/before`),
    # whose `mailer` package is measured instead of this one (its parser helper follows it).
    sys.path.insert(0, str(Path(args.implementation).resolve() if args.implementation else REPO))
    from mailer.store import open_store
    try:
        from mailer.subscribers.importer import export_csv, import_csv
    except ImportError:  # versions before the import engine had its own package
        from mailer.subscribers import export_csv, import_csv

    store = open_store(args.url)
    base_kb = _vm_hwm_kb()
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    result: dict = {}
    if args.op == "floor-import":
        result.update(floor_import(store, args.source))
    elif args.op == "floor-export":
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            result.update(floor_export(store, out))
    elif args.op == "import":
        report = import_csv(store, Path(args.csv))
        summary = report.counts_line() if hasattr(report, "counts_line") else report.summary()
        result.update(rows=report.rows, summary=summary, rejections=len(report.rejections),
                      first_rejections=[f"{r.line}: {r.value!r}: {r.reason}" for r in report.rejections[:3]])
    else:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            result["rows"] = export_csv(store, out)
    result.setdefault("seconds", time.perf_counter() - started)
    if profiler is not None:
        profiler.disable()
        import pstats
        stats_path = CACHE / f"profile-{args.label or args.op}.out"
        profiler.dump_stats(str(stats_path))
        with open(CACHE / f"profile-{args.label or args.op}.txt", "w") as text:
            pstats.Stats(str(stats_path), stream=text).sort_stats("tottime").print_stats(25)
            pstats.Stats(str(stats_path), stream=text).sort_stats("cumulative").print_stats(40)
        result["profile"] = str((CACHE / f"profile-{args.label or args.op}.txt").relative_to(REPO))
    with store.engine.connect() as conn:
        result["count"] = store.count_subscribers(conn)
    me, helpers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(hwm_kb=_vm_hwm_kb(), base_kb=base_kb, helpers_kb=helpers.ru_maxrss,
                  cpu=me.ru_utime + me.ru_stime - cpu_before, helpers_cpu=helpers.ru_utime + helpers.ru_stime)
    store.close()
    print("RESULT " + json.dumps(result))


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            with open(f"/proc/{pids[index]}/task/{pids[index]}/children") as children:
                pids.extend(int(p) for p in children.read().split())
        except OSError:
            pass
        index += 1
    return pids


def _vm_hwm_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _memory_kb(pids: list[int]) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) of these processes, from smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def run_child(op: str, url: str, csv_path: Path | None = None, out: Path | None = None, profile: bool = False,
              implementation: str | None = None, label: str = "", source: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", op, "--url", url, "--label", label]
    if source:
        cmd += ["--source", source]
    if implementation:
        cmd += ["--implementation", implementation]
    if csv_path:
        cmd += ["--csv", str(csv_path)]
    if out:
        cmd += ["--out", str(out)]
    if profile:
        cmd.append("--profile")
    peak_rss = peak_pss = 0
    helper_hwm: dict[int, int] = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:  # sample the process tree's memory (RSS double-counts shared pages; PSS does not)
            tree = _tree(proc.pid)
            rss, pss = _memory_kb(tree)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            for pid in tree[1:]:  # the helper's own peak: VmHWM is per address space, so it starts again at exec
                helper_hwm[pid] = max(helper_hwm.get(pid, 0), _vm_hwm_of(pid))
            time.sleep(0.05)
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child {op} failed:\n{stderr[-3000:]}")
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result.update(sampled_rss_kb=peak_rss, sampled_pss_kb=peak_pss)
    if helper_hwm:  # RUSAGE_CHILDREN's figure includes the importer's memory the helper was forked with
        result["helpers_kb"] = max(helper_hwm.values())
    return result


# ----- databases ---------------------------------------------------------------------------------
class FreshDatabase:
    """A new SQLite file, or a new schema in the given PostgreSQL database."""

    def __init__(self, url: str | None, label: str) -> None:
        self.base = url
        self.schema = None
        if url is None:
            path = CACHE / f"bench-{label}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self.url = f"sqlite:///{path}"
            self.path = path
        else:
            import sqlalchemy as sa
            self.schema = f"bench_{uuid.uuid4().hex[:10]}"
            with sa.create_engine(url).begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
            separator = "&" if "?" in url else "?"
            self.url = f"{url}{separator}options={quote(f'-csearch_path={self.schema}')}"
            self.path = None

    def drop(self) -> None:
        if self.schema:
            import sqlalchemy as sa
            with sa.create_engine(self.base).begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))
        elif self.path:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def verify(url: str | None) -> None:
    """The helper-process path and the in-process path give the same reports and the same rows."""
    sys.path.insert(0, str(REPO))
    import sqlalchemy as sa

    import mailer.subscribers.importer.parse as parse
    from mailer.subscribers.importer import import_csv
    from mailer.store.schema import list_members, subscriber_events, subscribers
    from mailer.store import open_store

    source = csv_for(100_000)
    variant = CACHE / "verify-status-lists.csv"  # adds status, lists and created_at columns
    rng = random.Random(7)
    with source.open(encoding="utf-8", newline="") as inp, variant.open("w", encoding="utf-8", newline="") as out:
        reader, writer = csv.reader(inp), csv.writer(out, lineterminator="\n")
        writer.writerow([*next(reader), "status", "lists", "created_at"])
        for row in reader:
            writer.writerow([*row, rng.choice(["", "", "", "active", "pending", "unsubscribed", "bounced", "nope"]),
                             rng.choice(["", "", "news", "news, events"]), rng.choice(["", "2024-05-06T07:08:09+00:00"])])
    print(f"[verify] in process vs helper process, on {source.name} then {variant.name} (twice)")
    dumps = []
    for parallel in (False, True):
        parse.PARALLEL_MIN_BYTES = 0 if parallel else 1 << 60
        db = FreshDatabase(url, f"verify-{parallel}")
        try:
            store = open_store(db.url)
            reports = []
            for path, kwargs in ((source, {}), (variant, {"lists": ("vip",)}), (variant, {"resubscribe": True})):
                report = import_csv(store, path, **kwargs)
                reports.append((report.summary(), [(r.line, r.value, r.reason) for r in report.rejections]))
            with store.engine.connect() as conn:
                rows = [tuple(v for k, v in r._mapping.items() if k not in ("updated_at", "confirmed_at", "unsubscribed_at")
                              and not (k == "created_at" and v.year >= 2026))
                        for r in conn.execute(sa.select(subscribers).order_by(subscribers.c.email))]
                events = conn.execute(sa.select(subscriber_events.c.kind, subscriber_events.c.new_status,
                                                subscriber_events.c.reason).order_by(subscriber_events.c.id)).all()
                members = sorted(conn.execute(sa.select(list_members.c.list_name, list_members.c.subscriber_id)).all())
            store.close()
            dumps.append((reports, rows, events, members))
        finally:
            db.drop()
    same = dumps[0] == dumps[1]
    print(f"  {dumps[0][0][-1][0]}")
    print(f"  {len(dumps[0][1]):,} subscribers, {len(dumps[0][2]):,} events, {len(dumps[0][3]):,} list memberships: "
          f"{'identical' if same else 'DIFFERENT'}")
    if not same:
        raise SystemExit(1)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def show(label: str, result: dict, size: int | None = None) -> None:
    seconds, rows = result["seconds"], result["rows"]
    hwm, helpers = result["hwm_kb"] / 1024, result["helpers_kb"] / 1024
    total_rss = hwm + (helpers if helpers > 1 else 0)
    pss = result["sampled_pss_kb"] / 1024
    line = (f"  {label:<24} {seconds:7.2f} s {rows / seconds:>10,.0f} rows/s   peak RSS {hwm:5.1f} MB"
            + (f" + helper {helpers:5.1f} MB = {total_rss:5.1f} MB" if helpers > 1 else ""))
    print(line, flush=True)
    cpu = result["cpu"] + result["helpers_cpu"]
    print(f"  {'':<24} CPU {result['cpu']:.2f} s" + (f" + helper {result['helpers_cpu']:.2f} s" if result["helpers_cpu"] else "")
          + f" ({cpu / seconds:.2f} cores busy; load average now {os.getloadavg()[0]:.1f});"
          f" sampled peak PSS {pss:.1f} MB (RSS {result['sampled_rss_kb'] / 1024:.1f} MB), "
          f"{result['base_kb'] / 1024:.0f} MB before the operation", flush=True)
    if size is not None and size >= 1_000_000:
        scaled = seconds * 1_000_000 / size
        print(f"  {'':<24} targets: ≤ {TARGET_SECONDS_PER_MILLION:.0f} s per million {verdict(scaled <= TARGET_SECONDS_PER_MILLION)}"
              f" (CPU of the busiest process {max(result['cpu'], result['helpers_cpu']) * 1_000_000 / size:.1f} s);"
              f" peak ≤ {TARGET_RSS_MB:.0f} MB: RSS sum {verdict(total_rss <= TARGET_RSS_MB)},"
              f" PSS {verdict(pss <= TARGET_RSS_MB)}", flush=True)
    if "summary" in result:
        print(f"  {'':<24} {result['summary']}; {result['count']:,} in the database", flush=True)
    if result.get("profile"):
        print(f"  {'':<24} profile: {result['profile']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (a fresh schema per run); default SQLite")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the databases in bench/.cache")
    parser.add_argument("--verify", action="store_true",
                        help="check that the helper-process and in-process paths give the same result, then exit")
    parser.add_argument("--implementation", metavar="DIR",
                        help="measure the mailer package of another checkout instead "
                             "(e.g. mkdir /tmp/before && git archive HEAD~1 | tar -x -C /tmp/before)")
    parser.add_argument("--child", choices=("import", "export", "floor-import", "floor-export"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.op = args.child
        child(args)
        return

    if args.verify:
        verify(args.database_url)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    engine = "PostgreSQL" if args.database_url else "SQLite (WAL)"
    print(f"mailer import benchmark — Python {platform.python_version()}, {os.cpu_count()} cores, {engine}"
          + (f", implementation {args.implementation}" if args.implementation else ""))
    for size in sizes:
        path = csv_for(size)
        print(f"\n[{size:,} rows] {path.relative_to(REPO)} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
        db = FreshDatabase(args.database_url, str(size))
        floor_db = FreshDatabase(args.database_url, f"floor-{size}")
        try:
            run = dict(profile=args.profile, implementation=args.implementation)
            imported = run_child("import", db.url, path, **run, label=f"import-{size}")
            show("import into empty db", imported, size)
            floor = run_child("floor-import", floor_db.url, source=db.url, label=f"floor-import-{size}")
            compare("import", imported, floor, "executemany of the same rows" if not args.database_url
                    else "COPY of the same rows", TARGET_IMPORT_PER_MILLION, size)
            if size == max(sizes):
                show("re-import (unchanged)", run_child("import", db.url, path, **run, label=f"reimport-{size}"), size)
            out = CACHE / f"export-{size}.csv"
            exported = run_child("export", db.url, out=out, **run, label=f"export-{size}")
            show("export_csv", exported, size)
            floor = run_child("floor-export", db.url, out=out, label=f"floor-export-{size}")
            compare("export", exported, floor, "bare SELECT + csv.writer", TARGET_EXPORT_PER_MILLION, size)
            out.unlink(missing_ok=True)
        finally:
            if not args.keep:
                db.drop()
            floor_db.drop()


def compare(what: str, result: dict, floor: dict, floor_label: str, target_per_million: float, size: int) -> None:
    """The operation next to its floor measured in the same run, as a ratio: a noisy machine slows both."""
    ratio = result["seconds"] / floor["seconds"]
    scaled = result["seconds"] * 1_000_000 / size
    print(f"  {'':<24} floor ({floor_label}): {floor['seconds']:.2f} s → {what} = {ratio:.2f}× the floor;"
          f" per million {scaled:.1f} s, target ≤ {target_per_million:.0f} s {verdict(scaled <= target_per_million)}"
          f" (floor per million {floor['seconds'] * 1_000_000 / size:.1f} s)", flush=True)
    cpu = max(result["cpu"], result["helpers_cpu"])
    print(f"  {'':<24} CPU of the busiest process {cpu:.2f} s against the floor's {floor['floor_cpu']:.2f} s:"
          f" {cpu / floor['floor_cpu']:.2f}× (CPU time is what a loaded machine distorts least)", flush=True)

if __name__ == "__main__":
    main()
