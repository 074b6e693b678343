"""`python -m mailer.cli` runs the command line (the tests use it for real subprocesses)."""

from .main import main

main()
