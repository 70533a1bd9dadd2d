"""What the three CLIs share about versions: `--version` prints the program's, and the model version
flag of scan-export and scan-serve is `--model-version` (the old `--version N` is refused with a hint).

Torch-free: scan-serve imports it.
"""

from __future__ import annotations

from typing import Any, Callable

import click

PACKAGE = "scan-service"


def version_option(prog: str) -> Callable[[Any], Any]:
    """`--version`: print `<prog> <installed package version>` and exit."""
    return click.version_option(package_name=PACKAGE, prog_name=prog, message="%(prog)s %(version)s")


class ModelVersionCommand(click.Command):
    """A command whose model version flag is `--model-version`; `--version N` (its old spelling) is refused."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, word in enumerate(args):
            value = word.split("=", 1)[1] if word.startswith("--version=") else (
                args[i + 1] if word == "--version" and i + 1 < len(args) else None)
            if value is not None and (value.isdigit() or value == "next"):
                raise click.UsageError(f"--version {value}: the model version flag is now --model-version "
                                       f"(--version prints the program's version)", ctx)
            if word == "--":
                break
        return super().parse_args(ctx, args)
