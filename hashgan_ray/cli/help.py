"""How every `hashgan-ray` parser looks: a paragraph that says what the command
is for, examples kept as written, defaults shown once, and user errors on one line."""
from __future__ import annotations

import argparse
import textwrap

WIDTH = 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog as written (add_command wraps the description);
    an option's default appended once, where it has one and its help does not
    already say it."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=WIDTH)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, "", argparse.SUPPRESS)
                or "default" in text or isinstance(action, argparse._VersionAction)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, exit status 2: what is wrong,
    and where the help is (the usage it would print is on that help page)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(commands, name: str, *, summary: str, description: str, examples: list[str],
                usage: str | None = None, **options) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (the parent's list), a paragraph of
    description and an epilog of examples, one command per line."""
    return commands.add_parser(
        name, help=summary, usage=usage, formatter_class=HelpFormatter,
        description=textwrap.fill(" ".join(description.split()), WIDTH),
        epilog="examples:\n" + "\n".join(map(_example, examples)), **options)


def _example(command: str) -> str:
    """One example command, continued over lines (shell style) where it is long."""
    lines = textwrap.wrap(command, WIDTH - 6, break_long_words=False, break_on_hyphens=False)
    return "  " + " \\\n      ".join(lines)


def required_group(parser, title: str = "required", position: int = 1):
    """An argument group listed before "options" in the help (`position` 1:
    first; 2: after the first such group): what a command needs, then its own
    options, then the shared ones."""
    group = parser.add_argument_group(title)
    # argparse lists groups in creation order: move this one up
    groups = parser._action_groups
    groups.insert(position, groups.pop())
    return group
