"""The `mea` command line: `mea.cli.main` (the group and its entry point `run`), one module per
command group, every heavy import inside the commands."""
