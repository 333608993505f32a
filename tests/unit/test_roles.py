from pathlib import Path

from slack_sdk.web.async_client import AsyncWebClient

from bot.config import load_config
from bot.notifier import Notifier
from bot.roles import RoleDirectory
from tests.conftest import write_config


def directory(tmp_path: Path, roles: dict) -> RoleDirectory:
    # Naming people reads the config only: no Slack call is made, so the client points nowhere.
    return RoleDirectory(load_config(write_config(tmp_path, roles=roles)), Notifier(AsyncWebClient(token="xoxb-unused")))


def test_a_refusal_names_the_roles_holders_before_the_admins(tmp_path):
    roles = directory(tmp_path, {"deployers": {"users": ["U0ALICE", "U0CAROL"], "groups": ["S0MLENG"]},
                                 "admins": {"users": ["U0CAROL"]}})
    # An admin who also holds the role is named once, as an admin.
    assert roles.who_to_ask("deployers") == "<@U0ALICE>, <!subteam^S0MLENG> (deployers) or an admin (<@U0CAROL>)"
    assert roles.who_to_ask("approvers") == "an admin (<@U0CAROL>)"  # nobody holds it: the admins grant it
    assert roles.who_to_ask("admins") == "an admin (<@U0CAROL>)"


def test_a_long_list_of_holders_is_cut_with_a_count(tmp_path):
    users = [f"U0USER{i:02d}" for i in range(12)]
    said = directory(tmp_path, {"approvers": {"users": users}}).who_to_ask("approvers")
    assert said == ", ".join(f"<@{u}>" for u in users[:5]) + ", 7 more (approvers) or an admin"
