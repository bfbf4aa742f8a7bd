"""How every `hashgan-ray` parser looks: a paragraph that says what the command
is for, examples kept as written, defaults shown once, and user errors on one line."""
from __future__ import annotations

import argparse
import shlex
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
        # `is`, not `in`: a default of 0 is shown (0 == False)
        nothing = default is None or default is False or default == "" or default == argparse.SUPPRESS
        if (not action.option_strings or nothing or "default" in text
                or isinstance(action, argparse._VersionAction)):
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
        epilog="examples:\n" + "\n".join(map(format_example, examples)), **options)


def format_example(command: str) -> str:
    """One example command, continued over lines (shell style) where it is long;
    an option stays on the line of its values, a quoted argument is never split."""
    chunks: list[str] = []
    for word in shlex.split(command, posix=False):          # posix=False keeps the quotes
        if chunks and not word.startswith("-"):
            chunks[-1] += " " + word
        else:
            chunks.append(word)
    lines = [""]
    for chunk in chunks:
        if lines[-1] and len(lines[-1]) + 1 + len(chunk) > WIDTH - 8:
            lines.append("")
        lines[-1] += (" " if lines[-1] else "") + chunk
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
