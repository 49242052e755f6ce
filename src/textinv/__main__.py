"""`python -m textinv` runs the command-line interface."""

from textinv.cli import main

raise SystemExit(main())
