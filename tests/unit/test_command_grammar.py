import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.commands import UsageError, split_words, tokenize


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
