"""Content: brief files and issue folders in, an `Email` with per-recipient slots out.

* `briefs` — the editors' arrow format and Markdown brief files; `issue` — issue folders and `issue.toml`;
* `markup` — editor Markdown to HTML and text; `i18n` — the fixed strings in French and English;
* `render` — Jinja2 → MJML → HTML once per issue, plus the text part, with slots for what varies per recipient.
"""
