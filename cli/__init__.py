"""The `mtv` command line (installed as the import package `mtv_cli`)."""
