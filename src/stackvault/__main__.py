"""`python -m stackvault`: the same as the `stackvault` command."""

from stackvault.cli.entry import main

main()
