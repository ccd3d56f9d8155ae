"""`python -m taper`: the `taper` command."""

from taper.cli import main

main()
