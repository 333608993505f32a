import pytest

from handlers.commands import UsageError, tokenize


def test_verb_args_and_options():
    assert tokenize("deploy ranker v2 force=true") == ("deploy", ["ranker", "v2"], {"force": "true"})


def test_quoted_reason_stays_one_argument():
    assert tokenize('lock ranker prod "db migration tonight"') == ("lock", ["ranker", "prod", "db migration tonight"], {})


def test_empty_text_is_help():
    assert tokenize("   ") == ("help", [], {})


def test_unbalanced_quote_is_a_usage_error():
    with pytest.raises(UsageError, match="quotes"):
        tokenize('lock ranker prod "oops')
