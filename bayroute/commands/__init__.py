"""CLI command implementations, mounted on the typer app by ``bayroute.cli``."""
