"""mkdocs hook: render the command-line reference from the argparse parsers at build time.

The page ``reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with one section
per subcommand of ``voxelpipe.cli.app.build_parser()`` (usage, description, every option with its flags, help,
default, choices and environment variable). Nothing here knows the commands by name, so the page follows the CLI
as it changes. Each command's section has the anchor ``#<command>`` (e.g. ``reference/cli.md#petct-index``),
which the user guide links to, and links back to ``guide/<command>.md`` when that page exists. The environment
variable shown is the CLI's own ``env_name(action)`` when ``voxelpipe.cli.app`` has one, else ``VOXELPIPE_`` + the
first long option in upper case with dashes as underscores (``--table-format`` -> ``VOXELPIPE_TABLE_FORMAT``);
positional arguments have none.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"
ENV_PREFIX = "VOXELPIPE_"
USAGE_WIDTH = 100


def _import_cli():
    """This checkout's ``voxelpipe.cli.app`` (``build_parser``, maybe ``env_name``): ``src/`` goes first on the
    path, so an installed voxelpipe of another version is never documented by mistake."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    if Path(src).is_dir() and src not in sys.path:
        sys.path.insert(0, src)
    return importlib.import_module("voxelpipe.cli.app")


def env_variable(action: argparse.Action, cli=None) -> str | None:
    """The environment variable that sets ``action`` (None for a positional argument).

    The CLI's own ``env_name(action)`` when it has one, so the page shows exactly what the program reads; else
    ``VOXELPIPE_`` + the first long option in upper case with dashes as underscores.
    """
    if not action.option_strings:
        return None
    if cli is not None and callable(getattr(cli, "env_name", None)):
        return cli.env_name(action)
    flag = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _plain(text: object) -> str:
    """Help text as literal Markdown: ``<key>``, ``summary_*.csv`` and ``[x]`` stay as written."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\`*_[]":
        text = text.replace(char, "\\" + char)
    return text


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _code(text: object) -> str:
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _help_text(action: argparse.Action, prog: str) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = dict(vars(action), prog=prog)
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    try:
        return action.help % params
    except (KeyError, TypeError, ValueError):
        return action.help


def _default_text(action: argparse.Action, help_text: str = "") -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if isinstance(action, argparse._StoreTrueAction) else "on"
    if action.required:
        return "required"
    default = action.default
    if default is None or default == argparse.SUPPRESS:
        # resolved at run time: take the help's own "(default ...)" words, if it has them
        stated = re.search(r"\(default:?\s*([^()]*(?:\([^()]*\)[^()]*)*)\)", help_text)
        return _plain(stated.group(1).strip()) if stated else "—"
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return _code(default)


def _flags_text(action: argparse.Action, prog: str) -> str:
    """The flags as argparse's own help shows them (``--format {zarr,hdf5,npz}``, ``--out MANIFEST``)."""
    formatter = argparse.HelpFormatter(prog=prog, width=USAGE_WIDTH)
    if not action.option_strings:
        return _code(formatter._metavar_formatter(action, action.dest)(1)[0])
    return _code(formatter._format_action_invocation(action))


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _exclusive_notes(parser: argparse.ArgumentParser) -> list[str]:
    notes = []
    for group in parser._mutually_exclusive_groups:
        flags = [" / ".join(a.option_strings) or a.dest for a in group._group_actions]
        kind = "exactly one" if group.required else "at most one"
        notes.append(f"Give {kind} of {', '.join(_code(f) for f in flags)}.")
    return notes


def _actions_table(parser: argparse.ArgumentParser, cli=None, with_env: bool = True) -> list[str]:
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    lines: list[str] = []
    if positionals:
        lines += ["**Arguments**", "", "| Argument | Description | Number |", "| --- | --- | --- |"]
        for action in positionals:
            count = {"+": "one or more", "*": "any number", "?": "optional", None: "one"}.get(action.nargs, str(action.nargs))
            lines.append(f"| {_flags_text(action, parser.prog)} | {_cell(_plain(_help_text(action, parser.prog)))} | {count} |")
        lines.append("")
    if options:
        header = "| Option | Description | Default |" + (" Environment variable |" if with_env else "")
        lines += ["**Options**", "", header, "| --- | --- | --- |" + (" --- |" if with_env else "")]
        for action in options:
            raw_help = _help_text(action, parser.prog)
            text = _plain(raw_help)
            if action.choices is not None and action.metavar is not None:  # else the flags show {a,b,c}
                text = text.rstrip()
                text += ("" if not text or text.endswith(".") else ".") + f" Choices: {', '.join(_code(c) for c in action.choices)}."
            row = f"| {_flags_text(action, parser.prog)} | {_cell(text)} | {_cell(_default_text(action, raw_help))} |"
            if with_env:
                env = env_variable(action, cli) if not isinstance(action, argparse._VersionAction) else None
                row += f" {_code(env) if env else '—'} |"
            lines.append(row)
        lines.append("")
    notes = _exclusive_notes(parser)
    if notes:
        lines += [" ".join(notes), ""]
    return lines


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub in [f[2] for f in found]:  # an alias of a command already listed
                    continue
                found.append((name, helps.get(name, ""), sub))
    return found


def render_cli_reference(parser: argparse.ArgumentParser, guides: dict[str, str] | None = None, cli=None) -> str:
    """Markdown for the whole CLI: global options, a command index, then one section per command.

    Args:
        parser: the top-level parser, with one subparser per command.
        guides: command name -> link (relative to the CLI page) of its user guide page, where there is one.
        cli: the CLI module, whose ``env_name(action)`` (if any) names the environment variables.
    """
    guides = guides or {}
    commands = _subcommands(parser)
    lines = ["## Global options", "", "Global options come before the command name.", "",
             "```text", _usage(parser), "```", ""]
    if parser.description:
        lines += [_plain(parser.description), ""]
    lines += _actions_table(parser, cli)
    if parser.epilog:
        lines += [_plain(parser.epilog), ""]
    lines += ["## Commands", "", "| Command | What it does |", "| --- | --- |"]
    lines += [f"| [`{name}`](#{name}) | {_cell(_plain(summary))} |" for name, summary, _ in commands]
    lines.append("")
    for name, summary, sub in commands:
        lines += [f"### {name} {{ #{name} }}", ""]
        description = sub.description or summary
        if description:
            sentence = description[0].upper() + description[1:] + ("" if description.endswith(".") else ".")
            lines += [_plain(sentence), ""]
        if name in guides:
            lines += [f"User guide: [what `{name}` reads and writes, exit codes, examples]({guides[name]}).", ""]
        lines += ["```text", _usage(sub), "```", ""]
        lines += _actions_table(sub, cli)
        if sub.epilog:
            lines += [_plain(sub.epilog), ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE or MARKER not in markdown:
        return markdown
    cli = _import_cli()
    parser = cli.build_parser()
    guides = {name: f"../guide/{name}.md" for name, _, _ in _subcommands(parser)
              if files.get_file_from_path(f"guide/{name}.md") is not None}
    return markdown.replace(MARKER, render_cli_reference(parser, guides, cli))
