"""The `/mlops` grammar every domain's verbs share: `<verb> [args] [key=value]` read into a Command, the words
and options checks, and how a reply quotes what was typed."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.notifier import escape, excerpt

if TYPE_CHECKING:
    from bot.config import Config


class UsageError(Exception):
    """Bad arguments; the message says what was wrong and the verb's usage is shown with it."""


@dataclass(frozen=True)
class Command:
    user: str
    channel: str
    verb: str
    args: list[str]
    options: dict[str, str]
    response_url: str = ""
    trigger_id: str = ""
    dry_run: bool = False  # read and taken out of `options` by the router, so no parser passes it on

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)


DRY_RUN = "dry_run"
FLAG_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
ENVS = ("staging", "prod")

# A reply quotes at most this much of what was typed: a 700 KB command was once echoed back whole.
ECHO = 80
ECHO_OPTIONS = 5  # unknown option names listed by name; the others are counted
# Longest error text an ack carries; the grammars of other modules quote input too.
MAX_ERROR = 2000


def split_words(text: str) -> list[str]:
    """Shell-like words: quotes keep an argument with spaces whole."""
    if not any(c in text for c in "\"'\\"):
        return text.split()  # nothing quoted: the words shlex would give, at a fraction of its cost
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"could not read the command: {exc} (check your quotes)") from None


def tokenize(text: str) -> tuple[str, list[str], dict[str, str]]:
    """`deploy ranker v2 urgent=yes` → ("deploy", ["ranker", "v2"], {"urgent": "yes"})."""
    args, options = [], {}
    for word in split_words(text):
        key, sep, value = word.partition("=")
        if sep and key.isidentifier():
            options[key.lower()] = value
        else:
            args.append(word)
    verb = args.pop(0).lower() if args else "help"
    return verb, args, options


def quoted(text: str) -> str:
    """Someone's input as a reply quotes it: its start when long, escaped."""
    return escape(excerpt(text, ECHO))


def flag(name: str, word: str) -> bool:
    """true/false, yes/no, 1/0; anything else is a usage error, never quietly false."""
    value = FLAG_WORDS.get(word.lower())
    if value is None:
        raise UsageError(f"`{name}` is true or false (yes/no, 1/0), not `{quoted(word)}`")
    return value


def no_more_words(cmd: Command, count: int) -> None:
    """Refuse words after the first `count`: a word the parser would drop is one the person meant something by."""
    if len(cmd.args) > count:
        raise UsageError(f"unexpected words: {quoted(' '.join(cmd.args[count:]))}")


def model_named(config: Config, cmd: Command, index: int = 0) -> str:
    """The configured model the command's word `index` names."""
    if len(cmd.args) <= index:
        raise UsageError("name a model")
    name = cmd.args[index]
    if name not in config.models:
        raise UsageError(f"unknown model `{quoted(name)}`; known models: {', '.join(sorted(config.models)) or 'none'}")
    return name


def only_model(config: Config, cmd: Command) -> str:
    """The model named by the command's one word."""
    model = model_named(config, cmd)
    no_more_words(cmd, 1)
    return model


def env_named(config: Config, model: str, word: str | None, default: str = "staging") -> str:
    """The environment of `model` that `word` names, `default` when no word was given."""
    env = word or default
    if env not in config.models[model].environments:
        known = ", ".join(config.models[model].environments)
        raise UsageError(f"unknown environment `{quoted(env)}` for {model}; environments: {known}")
    return env


def refused(exc: Exception) -> str:
    """A dry run's answer when the real command would be refused."""
    return f":warning: would be refused: {exc}"
