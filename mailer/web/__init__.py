"""The web: `app` (the public Starlette app: unsubscribe, subscribe/confirm, webhooks, archive) and
`preview` (the editor's local preview app and `mailer build`)."""
