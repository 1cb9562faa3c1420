"""`python -m harness ...` is the `phonehome` command."""

from harness.cli import main

raise SystemExit(main())
