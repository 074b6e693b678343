"""What editors see before sending: `mailer build` files and the `mailer preview` local server.

The preview re-renders when a file of the issue (or a template) changes; the page polls a cheap
version endpoint (file sizes and mtimes) and reloads itself, so no browser extension is needed.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

from ..content import i18n
from .. import links, tokens
from ..links import TEST_SUBSCRIBER_ID
from ..config import Settings, secret_key_for
from ..errors import MailerError
from ..content.issue import find_issue_folder, load_issue
from ..mime import MessageFactory
from ..content.render import Recipient, RenderedIssue, jinja_environment, render_issue

# the Reports pages run no script at all, and load nothing from elsewhere
REPORTS_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:",
                   "Cache-Control": "no-store"}
SAMPLE_NAME = "Camille Exemple"
SAMPLE_EMAIL = "lecteur@example.org"


@dataclass(frozen=True)
class BuildResult:
    slug: str
    out_dir: Path | None
    html_bytes: bytes
    text: str
    eml: bytes
    warnings: tuple[str, ...]
    briefs: tuple
    rendered: RenderedIssue
    audience: int | None = None  # active subscribers a send would freeze now (list and segment), with a store
    audience_text: str = ""      # the same, described ("12 active subscribers (segment: …)")


def sample_recipient(settings: Settings) -> Recipient:
    return Recipient(email=SAMPLE_EMAIL, name=SAMPLE_NAME,
                     unsubscribe_url=links.unsubscribe_url(settings.base_url, secret_key_for(settings),
                                                           TEST_SUBSCRIBER_ID))


def build_issue(settings: Settings, issue_ref: str, out_dir: Path | None = None, *, write: bool = True,
                store=None) -> BuildResult:  # noqa: ANN001 - a Store
    """Render once and produce the three files an editor checks (HTML, text, full .eml). With `store`,
    also the audience (`audience.audience_size`: a segment naming an unknown attribute raises SourceError)."""
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    audience_count, audience_text = None, ""
    if store is not None:
        from ..sending import audience
        audience_count = audience.audience_size(store, issue)
        audience_text = audience.describe(issue, audience_count)
    rendered = render_issue(issue, settings)
    recipient = sample_recipient(settings)
    html_text, text = rendered.personalise(recipient)
    eml = MessageFactory(rendered).build(recipient, tokens.message_id(secret_key_for(settings), issue.slug, TEST_SUBSCRIBER_ID,
                                                                      settings.sender_domain))
    target = None
    if write:
        target = out_dir or settings.root / "build" / issue.slug
        target.mkdir(parents=True, exist_ok=True)
        (target / "email.html").write_text(html_text, encoding="utf-8")
        (target / "email.txt").write_text(text, encoding="utf-8")
        (target / "email.eml").write_bytes(eml)
        (target / "email.mjml").write_text(rendered.mjml_source, encoding="utf-8")
    from ..dkim_signing import dkim_warnings  # short RSA key, unaligned domain, key readable by others
    return BuildResult(issue.slug, target, html_text.encode("utf-8"), text, eml,
                       (*rendered.warnings, *dkim_warnings(settings)), issue.briefs, rendered,
                       audience_count, audience_text)


def sources_version(settings: Settings, issue_ref: str) -> str:
    """Changes whenever a file of the issue or a template changes (size or mtime)."""
    digest = hashlib.sha1()
    try:
        folder = find_issue_folder(issue_ref, settings.issues_dir)
    except MailerError as exc:
        return "missing:" + str(exc)
    for directory in (folder, settings.templates_dir):
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def create_preview_app(settings: Settings, issue_ref: str, store=None):  # noqa: ANN001 - a Store
    """The preview as an ASGI app (Starlette); re-renders at most once per change of the sources. With
    `store`, the page shows the audience size (recounted at each change of the sources) and the
    Reports pages read it; without one, the Reports pages open one store (MAILER_DATABASE_URL) at
    their first request and the app closes it on shutdown: never a store (an engine, a migration
    check) per request."""
    import contextlib
    import threading

    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    cache: dict[str, object] = {}

    def current() -> BuildResult | MailerError:
        version = sources_version(settings, issue_ref)
        if cache.get("version") != version:
            try:
                cache["result"] = build_issue(settings, issue_ref, write=False, store=store)
            except MailerError as exc:
                cache["result"] = exc
            cache["version"] = version
        return cache["result"]  # type: ignore[return-value]

    page = jinja_environment(settings.templates_dir, autoescape=True).get_template("preview.html.j2")
    language = settings.language
    strings = i18n.strings(language)  # the page speaks the newsletter's language (MAILER_LANGUAGE)

    async def index(request):  # noqa: ANN001
        result = current()
        common = {"urls": links.PreviewSite(), "t": strings, "language": language, "version": cache["version"], "issue_ref": issue_ref}
        if isinstance(result, MailerError):
            return HTMLResponse(page.render(error=str(result), result=None, headers=[], html_size="", **common))
        message = message_from_bytes(result.eml, policy=policy.default)
        headers = [(k, str(v)) for k, v in message.items()]
        return HTMLResponse(page.render(error=None, result=result, headers=headers,
                                        html_size=i18n.decimal(len(result.html_bytes) / 1024, language), **common))

    async def email_html(request):  # noqa: ANN001
        result = current()
        if isinstance(result, MailerError):
            return HTMLResponse(f"<pre>{html.escape(str(result))}</pre>", status_code=500)
        return HTMLResponse(result.html_bytes)

    async def email_text(request):  # noqa: ANN001
        result = current()
        if isinstance(result, MailerError):
            return PlainTextResponse(str(result), status_code=500)
        return PlainTextResponse(result.text)

    async def email_eml(request):  # noqa: ANN001
        result = current()
        if isinstance(result, MailerError):
            return PlainTextResponse(str(result), status_code=500)
        return Response(result.eml, media_type="message/rfc822")

    async def version(request):  # noqa: ANN001
        return JSONResponse({"version": sources_version(settings, issue_ref)})

    reports_page = jinja_environment(settings.templates_dir, autoescape=True).get_template("reports.html.j2")
    owned: list = []  # the store the Reports pages opened themselves (no `store` given), closed on shutdown
    owned_lock = threading.Lock()

    def reports_store():  # noqa: ANN202 - a Store
        if store is not None:
            return store
        with owned_lock:
            if not owned:
                from ..store import open_store
                owned.append(open_store(settings.database_url))
            return owned[0]

    @contextlib.asynccontextmanager
    async def lifespan(app):  # noqa: ANN001, ANN202
        try:
            yield
        finally:
            with owned_lock:
                for opened in owned:
                    opened.close()
                owned.clear()

    def reports_html(slug: str | None) -> tuple[int, str]:
        from markupsafe import Markup

        from . import charts
        from ..sending.report import issue_report, list_growth, reports_overview, send_timeline
        db = reports_store()
        growth = list_growth(db)
        context = {"urls": links.PreviewSite(), "growth": growth, "report": None, "reports": [], "error": None,
                   "zone_name": settings.zone.key}
        if slug is None:
            return 200, reports_page.render(**_reports_context(settings.language),
                                            **{**context, "reports": reports_overview(db, settings)}, day_of=lambda moment: i18n.short_date(
                                                moment.astimezone(settings.zone).date(), settings.language, year=True),
                                            growth_svg=Markup(charts.growth_chart(growth, settings.language)))
        try:
            report = issue_report(settings, db, slug)
        except MailerError as exc:
            return 404, reports_page.render(**_reports_context(settings.language), **{**context, "error": str(exc)},
                                            growth_svg=Markup(charts.growth_chart(growth, settings.language)))
        language = report.language if report.language in i18n.STRINGS else settings.language
        timeline = send_timeline(db, report.issue_id, settings.zone)
        return 200, reports_page.render(
            **_reports_context(language), **{**context, "report": report, "timeline": timeline},
            figures=report_figures(report, language), warning=complaint_warning(report, language),
            labels=charts.interval_labels(timeline, language),
            zone_label=charts.offset_label(timeline, settings.zone.key) if timeline.starts else settings.zone.key,
            growth_svg=Markup(charts.growth_chart(growth, language)),
            deliveries_svg=Markup(charts.deliveries_chart(timeline, language, settings.zone.key)))

    async def reports(request):  # noqa: ANN001
        from starlette.concurrency import run_in_threadpool
        status, body = await run_in_threadpool(reports_html, request.path_params.get("slug"))
        return HTMLResponse(body, status_code=status, headers=REPORTS_HEADERS)

    return Starlette(routes=[
        Route(links.PREVIEW, index), Route(links.PREVIEW_HTML, email_html), Route(links.PREVIEW_TEXT, email_text),
        Route(links.PREVIEW_EML, email_eml), Route(links.PREVIEW_VERSION, version),
        Route(links.REPORTS, reports), Route(links.REPORT, reports),
    ], lifespan=lifespan)


def _reports_context(language: str) -> dict:
    """What every Reports page needs to speak `language`: its strings, its name, date formats, and a
    send's state worded (`SendState.text`: the state and why `mailer report` shows)."""
    return {"t": i18n.strings(language), "language": language, "short_date": i18n.short_date,
            "state_of": lambda report: report.send_state().text(language)}


def report_figures(report, language: str) -> list[tuple[str, str]]:  # noqa: ANN001 - an IssueReport
    """(label, value) rows of one issue's figures table, in `language`."""
    t = i18n.strings(language)
    rate = f"{i18n.decimal(report.complaint_rate * 100, language, 2)}\u00a0%"
    figures = [(t["reports_recipients"], report.recipients), (t["reports_sent"], report.sent),
               (t["reports_failed"], report.failed), (t["reports_skipped"], report.skipped),
               (t["reports_queued"], report.queued), (t["reports_bounced"], report.bounced),
               (t["reports_soft_bounced"], report.soft_bounced), (t["reports_complained"], report.complained),
               (t["reports_complaint_rate"], rate), (t["reports_unsubscribed"], report.unsubscribed)]
    if report.opens is not None:
        figures.append((t["reports_opens"], f"{report.opens['total']} ({report.opens['unique']})"))
    if report.tracked:
        value = t["reports_clicks_value"].format(total=report.clicks_total, unique=report.clicks_unique)
        if report.scanner_clicks:
            value += f"; {t['reports_scanners'].format(count=report.scanner_clicks)}"
        figures.append((t["reports_clicks_unique"], value))
    return [(label, str(value)) for label, value in figures]


def complaint_warning(report, language: str) -> str | None:  # noqa: ANN001 - an IssueReport
    """The complaint-rate warning of `report.warning()`, in `language` (None under the limit)."""
    if not report.over_limit:
        return None
    from ..providers.bounces.process import COMPLAINT_RATE_LIMIT

    def percent(rate: float) -> str:
        return f"{i18n.decimal(rate * 100, language, 2)}\u00a0%"
    return i18n.strings(language)["reports_complaint_warning"].format(rate=percent(report.complaint_rate),
                                                                      limit=percent(COMPLAINT_RATE_LIMIT))


def serve_preview(settings: Settings, issue_ref: str, *, host: str = "127.0.0.1", port: int = 8025) -> None:
    import uvicorn

    load_issue(issue_ref, settings.issues_dir, settings.zone)  # fail fast on a wrong ISSUE
    from ..store import open_store
    store = open_store(settings.database_url)
    try:
        uvicorn.run(create_preview_app(settings, issue_ref, store), host=host, port=port, log_level="warning")
    finally:
        store.close()
