"""The sandbox shows Slack messages and views as terminal text a person can read and act on."""
from __future__ import annotations

from bot.sandbox.render import Button, mrkdwn_to_text, render_message, render_view

CONFIRM = {
    "title": {"type": "plain_text", "text": "Unblock prod?"},
    "text": {"type": "mrkdwn", "text": "ranker v42 goes to every prod endpoint"},
    "confirm": {"type": "plain_text", "text": "Unblock"},
    "deny": {"type": "plain_text", "text": "Cancel"},
}

RELEASE_CARD = {
    "ts": "1732000000.000100",
    "text": "ranker v42 verified on staging",
    "edited": True,
    "reply_count": 3,
    "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": "ranker v42"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "Verified on staging by <@U1> in <#C0MLOPS|mlops>"},
         "fields": [{"type": "mrkdwn", "text": "*State*\nverified"},
                    {"type": "mrkdwn", "text": "*Digest*\nsha256:ab12"}]},
        {"type": "context", "elements": [
            {"type": "mrkdwn", "text": "approved <!date^1732000000^{date_short} {time}|Nov 19, 07:06 UTC>"},
            {"type": "mrkdwn", "text": "paging <!subteam^S0ONCALL|@oncall>"},
        ]},
        {"type": "divider"},
        {"type": "actions", "block_id": "release-7", "elements": [
            {"type": "button", "action_id": "releases.promote", "value": '{"id":7}', "style": "primary",
             "text": {"type": "plain_text", "text": "Unblock prod"}, "confirm": CONFIRM},
            {"type": "button", "action_id": "releases.reject", "value": '{"id":7}', "style": "danger",
             "text": {"type": "plain_text", "text": "Reject"}},
        ]},
    ],
}


def test_mrkdwn_tokens_become_readable() -> None:
    text = (
        "<@U1> and <@U2> deployed; see <https://ci.example/run/9|run 9> in <#C1|mlops>, ping "
        "<!subteam^S1|@oncall> <!here> at <!date^1700000000^{date_short} {time}|Nov 14> &amp; <https://x.example>"
    )
    assert mrkdwn_to_text(text, {"U1": "alice"}) == (
        "@alice and @U2 deployed; see run 9 (https://ci.example/run/9) in #mlops, ping "
        "@oncall @here at Nov 14 & https://x.example"
    )


def test_release_card_reads_top_to_bottom_with_numbered_buttons() -> None:
    buttons: list[Button] = []
    shown = render_message(RELEASE_CARD, buttons=buttons, users={"U1": "alice"})
    lines = shown.splitlines()
    assert lines[0] == "== ranker v42 =="
    assert "Verified on staging by @alice in #mlops" in lines
    assert any("*State*" in line and "*Digest*" in line for line in lines), "fields sit side by side"
    assert "approved Nov 19, 07:06 UTC · paging @oncall" in shown
    assert "[1] Unblock prod (primary, asks to confirm)  [2] Reject (danger)" in lines
    assert lines[-1] == "(edited, 3 replies)"
    assert buttons == [
        Button(1, "Unblock prod", "releases.promote", '{"id":7}', "release-7", "primary", CONFIRM),
        Button(2, "Reject", "releases.reject", '{"id":7}', "release-7", "danger", None),
    ]


def test_buttons_are_numbered_across_messages() -> None:
    buttons: list[Button] = []
    render_message(RELEASE_CARD, buttons=buttons)
    alert = {"text": "rows dropped", "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": ":warning: rows dropped 40%"},
         "accessory": {"type": "button", "action_id": "datagen.ack", "value": "a1",
                       "text": {"type": "plain_text", "text": "Ack"}}},
    ]}
    shown = render_message(alert, buttons=buttons)
    assert shown == ":warning: rows dropped 40%\n  [3] Ack"
    assert [(b.number, b.action_id, b.block_id) for b in buttons][-1] == (3, "datagen.ack", "block-0")


def test_plain_message_with_a_chart_shows_text_and_file() -> None:
    message = {"text": "Datagen for <#C1|mlops>", "files": [{"name": "rows.png", "title": "Rows per day"}]}
    shown = render_message(message)
    assert shown == "Datagen for #mlops\n[file: Rows per day]"


def test_modal_shows_inputs_and_its_buttons() -> None:
    modal = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Reject ranker v42"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "plain_text_input", "action_id": "text",
                         "placeholder": {"type": "plain_text", "text": "what is wrong"}},
             "hint": {"type": "plain_text", "text": "Shown in the release thread"}},
            {"type": "input", "block_id": "until", "optional": True,
             "label": {"type": "plain_text", "text": "Silence until"},
             "element": {"type": "datepicker", "action_id": "date"}},
            {"type": "image", "image_url": "https://charts.example/r.png", "alt_text": "eval loss"},
        ],
    }
    assert render_view(modal).splitlines() == [
        "┌ Reject ranker v42 ┐",
        "Reason: [what is wrong____]",
        "  Shown in the release thread",
        "Silence until (optional): <datepicker>",
        "[image: eval loss] https://charts.example/r.png",
        "<Cancel>  <Reject>",
    ]


def test_home_view_without_title_is_labelled() -> None:
    home = {"type": "home", "blocks": [{"type": "rich_text", "elements": [
        {"type": "rich_text_section",
         "elements": [{"type": "text", "text": "On call: "}, {"type": "user", "user_id": "U1"}]},
        {"type": "rich_text_list", "elements": [
            {"type": "rich_text_section", "elements": [{"type": "text", "text": "ranker: prod v41"}]},
            {"type": "rich_text_section", "elements": [{"type": "text", "text": "ranker: staging v42"}]},
        ]},
    ]}]}
    assert render_view(home) == "┌ App Home ┐\nOn call: @U1\n• ranker: prod v41\n• ranker: staging v42"
