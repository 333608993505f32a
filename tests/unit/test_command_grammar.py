import shlex

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.config import Secrets, load_config
from bot.runtime import Runtime
from handlers.grammar import DRY_RUN, FLAG_WORDS, UsageError, split_words, tokenize
from handlers.router import VERBS, help_text, read
from tests.conftest import write_config


def test_verb_args_and_options():
    assert tokenize("deploy ranker v2 force=true") == ("deploy", ["ranker", "v2"], {"force": "true"})


def test_quoted_reason_stays_one_argument():
    assert tokenize('lock ranker prod "db migration tonight"') == ("lock", ["ranker", "prod", "db migration tonight"], {})


def test_empty_text_is_help():
    assert tokenize("   ") == ("help", [], {})


def test_unbalanced_quote_is_a_usage_error():
    with pytest.raises(UsageError, match="quotes"):
        tokenize('lock ranker prod "oops')


# ASCII without quotes, backslashes and the control characters str.split() treats as spaces but shlex does not.
UNQUOTED = st.characters(codec="ascii", exclude_characters="\"'\\\x0b\x0c\x1c\x1d\x1e\x1f")


@given(st.text(alphabet=UNQUOTED, max_size=60))
def test_unquoted_text_splits_as_shlex_does(text):
    assert split_words(text) == shlex.split(text)


# -- every verb's grammar: a parse or a UsageError, and only the options it declares ----------------------

@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """The real runtime over the example config; the parsers read only its config and datagen jobs."""
    config = load_config(write_config(tmp_path_factory.mktemp("grammar")))
    built = Runtime(config, Secrets(slack_bot_token="xoxb-test", slack_signing_secret="secret"))
    yield built
    built.store.close()


DECLARED = sorted({name for v in VERBS.values() for name in v.options})
# The words the verbs look for, so the parsers get past their first checks, mixed with any text at all.
KNOWN_WORDS = ["ranker", "nosuchmodel", "staging", "prod", "qa", "to", "latest", "v1", "v2", "end", "datagen", "recsys",
               "cancel", "schedule", "override", "cover", "undo", "compare", "2026-03-10", "2026-03-10T14:00", "1", "#2",
               "²", "4h", "9d", "<@U0BOB>", "@U0BOB"]
WORD = st.one_of(st.sampled_from(KNOWN_WORDS), st.text(min_size=1, max_size=12).filter(lambda w: "=" not in w))
OPTION = st.tuples(
    st.one_of(st.sampled_from([*DECLARED, "force", "bogus", "dry_run2", "DRY_RUN"]),
              st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)),
    st.one_of(st.sampled_from(["true", "false", "yes", "no", "1", "0", "TRUE", "maybe", "", "recsys", "x y"]),
              st.text(max_size=8)),
)


def check(runtime, v, args, options):
    try:
        cmd, _ = read(runtime, v, args, options, "U0ALICE", "C0MLOPS")
    except UsageError:
        return
    # Accepted: every option given is one the verb declares (retrain: its conf is open by design).
    assert v.any_option or options.keys() <= v.options, (v.name, options)
    assert DRY_RUN not in cmd.options  # the router's own, never a parser's or a pipeline's
    if DRY_RUN in options:
        assert cmd.dry_run is FLAG_WORDS[options[DRY_RUN].lower()]
    else:
        assert cmd.dry_run is False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(VERBS)), args=st.lists(WORD, max_size=5), options=st.lists(OPTION, max_size=3))
@example(name="oncall", args=["undo", "²"], options=[])  # isdigit() passed it and int() raised ValueError: a 500
@example(name="silence", args=["end", "²"], options=[])
@example(name="deploy", args=["ranker", "v1"], options=[("dry_run", "maybe")])
def test_each_verb_parses_or_says_usage_and_takes_only_its_options(runtime, name, args, options):
    check(runtime, VERBS[name], args, dict(options))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(VERBS)), words=st.lists(st.one_of(WORD, OPTION.map("=".join)), max_size=6))
def test_typed_text_parses_or_says_usage(runtime, name, words):
    """The same through tokenize, as typed: quoting, key case and key=value splitting included."""
    try:
        verb, args, options = tokenize(shlex.join([name, *words]))
    except UsageError:
        return
    assert verb == name
    check(runtime, VERBS[verb], args, options)


def test_unknown_option_is_refused_naming_it_and_what_the_verb_takes(runtime):
    with pytest.raises(UsageError) as refused:
        read(runtime, VERBS["deploy"], ["ranker", "v1"], {"dryrun": "true"}, "U0ALICE", "C0MLOPS")
    assert str(refused.value) == "`/mlops deploy` does not understand `dryrun=`; it takes `dry_run=`"


def test_dry_run_is_true_or_false_only(runtime):
    lock = VERBS["lock"]
    cmd, parsed = read(runtime, lock, ["ranker", "prod"], {"dry_run": "Yes", "reason": "load test"}, "U0ALICE", "C0MLOPS")
    assert cmd.dry_run is True and cmd.options == {"reason": "load test"} and parsed == ("ranker", "prod", "load test")
    with pytest.raises(UsageError, match="`dry_run` is true or false"):
        read(runtime, lock, ["ranker", "prod"], {"dry_run": "maybe"}, "U0ALICE", "C0MLOPS")


def test_retrain_passes_its_conf_on_but_keeps_dry_run(runtime):
    cmd, request = read(runtime, VERBS["retrain"], ["ranker"], {"epochs": "3", "dry_run": "1"},
                                 "U0ALICE", "C0MLOPS")
    assert cmd.dry_run is True and request.args == {"epochs": "3"} and request.force is False


def test_words_a_parser_would_drop_are_refused(runtime):
    for text in ("promote ranker now", "unlock ranker prod please", "verify ranker prod twice", "models ranker",
                 "status ranker prod", "help deploy now"):
        name, args, options = tokenize(text)
        with pytest.raises(UsageError, match="unexpected words"):
            read(runtime, VERBS[name], args, options, "U0ALICE", "C0MLOPS")


# -- a word that is no verb: one line, the closest verbs, where the list is ---------------------------------

@pytest.mark.parametrize(("typed", "meant"), [("deplyo", "`deploy`"), ("rollbak", "`rollback`"), ("STATUS", "`status`"),
                                              ("oncal", "`oncall`")])
def test_a_mistyped_verb_is_answered_with_the_verb_meant(typed, meant):
    answer = help_text(typed)
    assert answer.startswith(f"Unknown verb `{typed}`. Did you mean {meant}")
    assert "/mlops help` lists the verbs" in answer and "\n" not in answer  # one line, not the verb table


# A word as the tokenizer yields it: no whitespace.
@given(st.text(st.characters(exclude_categories=("Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=300)
       .filter(lambda w: w not in VERBS))
def test_any_word_that_is_no_verb_gets_one_line_naming_only_real_verbs(word):
    answer = help_text(word)
    assert "\n" not in answer and answer.endswith("`/mlops help` lists the verbs.")
    named = answer.partition("Did you mean ")[2].removesuffix("? `/mlops help` lists the verbs.")
    assert all(name.strip("`") in VERBS for name in named.split(" or ") if named)


def test_a_word_like_no_verb_gets_no_guess():
    assert help_text("frobnicate") == "Unknown verb `frobnicate`. `/mlops help` lists the verbs."
