"""The Web API methods the emulator answers (auth, chat, conversations, usergroups, users, views, files) and the
workspace state they read and change: channels, messages, users, user groups, views, uploads, triggers."""
from __future__ import annotations

import itertools
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from bot.sandbox.block_kit import view_problems
from bot.sandbox.slack_api import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    TEAM_ID,
    Json,
    SlackApiError,
    dm_id,
    flag,
    id_list,
    json_arg,
    message_content,
    required,
)

MAX_TOPIC = 250  # conversations.setTopic's documented limit


@dataclass
class _Bucket:
    """Token bucket: `rate` tokens a second, at most `capacity`, refilled lazily."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> int:
        """Spend a token; return 0 when allowed, else the whole seconds to wait (at least 1)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate))


@dataclass
class Grant:
    """A trigger_id or response_url token the emulator issued for one delivery."""

    user: str
    channel: str | None
    message_ts: str | None
    issued: float
    uses: int = 0


class SlackMethods:
    """The workspace and the Web API methods over it; SlackEmulator serves them and routes each call here."""

    url: str  # the emulator's address once it is serving: permalinks and upload URLs point there

    def __init__(
        self, *, post_rate: float, post_burst: int, users: dict[str, dict] | None,
        usergroups: dict[str, dict] | None, channels: dict[str, dict] | None, trigger_ttl: float,
    ) -> None:
        self.post_rate = post_rate
        self.post_burst = post_burst
        self.trigger_ttl = trigger_ttl
        self._users = users
        self._known_channels = channels is not None
        self._channels: dict[str, Json] = {
            cid: {"id": cid, "name": c.get("name", cid.lower()), "is_channel": True, "is_im": False}
            for cid, c in (channels or {}).items()
        }
        self._usergroups: dict[str, Json] = {
            gid: {"id": gid, "handle": g.get("handle", gid.lower()), "name": g.get("name", gid)}
            for gid, g in (usergroups or {}).items()
        }
        self._auto_usergroups = usergroups is None
        self.usergroup_members: dict[str, list[str]] = {
            gid: list(g.get("users", [])) for gid, g in (usergroups or {}).items()
        }
        self.topics: dict[str, str] = {}
        self.ephemerals: list[Json] = []
        self.views: list[Json] = []
        self.home: dict[str, Json] = {}
        self.files: list[Json] = []
        self._messages: dict[str, dict[str, Json]] = {}
        self._open_views: dict[str, Json] = {}
        self._uploads: dict[str, Json] = {}
        self._triggers: dict[str, Grant] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._last_ts = 0
        self._ids = itertools.count(1)

    def user(self, user_id: str) -> Json:
        """users.info's view of a user; raises LookupError for a user the emulator was not told about."""
        if user_id == BOT_USER_ID:
            return {"id": BOT_USER_ID, "name": "mlops-bot", "real_name": "mlops-bot", "is_bot": True}
        if self._users is not None and user_id not in self._users:
            raise LookupError(user_id)
        given = (self._users or {}).get(user_id, {})
        name = given.get("name", user_id.lower())
        real_name = given.get("real_name", name)
        return {
            "id": user_id, "team_id": TEAM_ID, "name": name, "real_name": real_name, "is_bot": False,
            "tz": given.get("tz", "UTC"),
            "profile": {"real_name": real_name, "display_name": given.get("display_name", name),
                        **({"email": given["email"]} if "email" in given else {})},
            **{k: v for k, v in given.items() if k not in ("name", "real_name", "tz", "display_name", "email")},
        }

    def channel_name(self, channel: str) -> str:
        return self._channels[channel]["name"] if channel in self._channels else channel.lower()

    # -- state helpers ---------------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        micros = max(time.time_ns() // 1000, self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def _channel(self, channel: Any) -> str:
        """Resolve a channel argument to a channel id, creating it when the emulator is open-world."""
        if not isinstance(channel, str) or not channel:
            raise SlackApiError("channel_not_found")
        if channel.startswith("U"):
            return self._open_dm(channel, "channel_not_found")
        if channel not in self._channels:
            if self._known_channels or channel.startswith("D"):  # DMs exist only once opened
                raise SlackApiError("channel_not_found")
            self._channels[channel] = {"id": channel, "name": channel.lower(), "is_channel": True, "is_im": False}
        return channel

    def _open_dm(self, user: str, error: str) -> str:
        try:
            self.user(user)
        except LookupError:
            raise SlackApiError(error) from None
        dm = dm_id(user)
        self._channels.setdefault(dm, {"id": dm, "is_channel": False, "is_im": True, "user": user})
        return dm

    def _message(self, channel: str, ts: Any) -> Json:
        message = self._messages.get(channel, {}).get(ts)
        if message is None:
            if any(e["channel"] == channel and e["ts"] == ts for e in self.ephemerals):
                raise SlackApiError("cant_update_message")
            raise SlackApiError("message_not_found")
        return message

    def _post(self, channel: str, text: str, blocks: list[Any] | None, thread_ts: str | None,
              files: list[Json] | None = None) -> Json:
        stored = self._messages.setdefault(channel, {})
        parent = None
        if thread_ts:
            parent = stored.get(thread_ts)
            if parent is None:
                raise SlackApiError("thread_not_found")
            parent = stored[parent["thread_ts"] or parent["ts"]]  # replying to a reply threads on its parent
        ts = self._next_ts()
        message = {
            "type": "message", "ts": ts, "channel": channel, "user": BOT_USER_ID, "bot_id": BOT_ID,
            "text": text, "blocks": blocks, "thread_ts": parent["ts"] if parent else None,
            "edited": False, "reply_count": 0, "replies": [], "files": files or [],
        }
        stored[ts] = message
        if parent is not None:
            parent["thread_ts"] = parent["ts"]
            parent["reply_count"] += 1
            parent["replies"] = [*parent["replies"], {"user": BOT_USER_ID, "ts": ts}]
        return message

    def _delete(self, channel: str, ts: str) -> None:
        message = self._messages[channel].pop(ts)
        parent = self._messages[channel].get(message["thread_ts"] or "")
        if parent is not None and parent is not message:
            parent["reply_count"] -= 1
            parent["replies"] = [r for r in parent["replies"] if r["ts"] != ts]

    def _take_trigger(self, trigger_id: Any) -> Grant:
        grant = self._triggers.get(trigger_id) if isinstance(trigger_id, str) else None
        if grant is None:
            raise SlackApiError("invalid_trigger_id")
        if time.monotonic() - grant.issued > self.trigger_ttl:
            raise SlackApiError("expired_trigger_id")
        if grant.uses:
            raise SlackApiError("exchanged_trigger_id")
        grant.uses += 1
        return grant

    def _view_arg(self, args: Json) -> Json:
        view = json_arg(required(args, "view"), "invalid_arguments")
        if not isinstance(view, dict):
            raise SlackApiError("invalid_arguments")
        if problems := view_problems(view):
            raise SlackApiError("invalid_arguments", messages=problems)
        return view

    def _store_view(self, method: str, user: str, view: Json, view_id: str | None = None,
                    previous: str | None = None) -> Json:
        view_id = view_id or self._new_id("V")
        stored = {
            **view, "id": view_id, "team_id": TEAM_ID, "app_id": APP_ID, "bot_id": BOT_ID,
            "hash": secrets.token_hex(8), "state": {"values": {}},
            "private_metadata": view.get("private_metadata", ""), "callback_id": view.get("callback_id", ""),
            "root_view_id": self._open_views[previous]["root_view_id"] if previous else view_id,
            "previous_view_id": previous,
        }
        self._open_views[view_id] = stored
        self.views.append({"method": method, "user": user, "view_id": view_id, "view": stored})
        return stored

    # -- Web API methods -------------------------------------------------------------------------------------

    def _auth_test(self, args: Json) -> Json:
        return {
            "url": "https://sandbox.slack.com/", "team": "Sandbox", "user": "mlops-bot", "team_id": TEAM_ID,
            "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        now = time.monotonic()
        bucket = self._buckets.setdefault(
            channel, _Bucket(self.post_rate, self.post_burst, self.post_burst, now)
        )
        if wait := bucket.take(now):
            raise SlackApiError("ratelimited", status=429, headers={"Retry-After": str(wait)})
        text, blocks = message_content(args)
        message = self._post(channel, text, blocks, args.get("thread_ts"))
        return {"channel": channel, "ts": message["ts"], "message": dict(message)}

    def _chat_update(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        message = self._message(channel, args.get("ts"))
        if message["user"] != BOT_USER_ID:
            raise SlackApiError("cant_update_message")
        text, blocks = message_content(args)
        # Like Slack, an update without blocks keeps the message's blocks.
        message.update(text=text, blocks=message["blocks"] if blocks is None else blocks, edited=True)
        return {"channel": channel, "ts": message["ts"], "text": text, "message": dict(message)}

    def _chat_post_ephemeral(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        user = required(args, "user", "user_not_found")
        try:
            self.user(user)
        except LookupError:
            raise SlackApiError("user_not_found") from None
        text, blocks = message_content(args)
        ts = self._next_ts()
        self.ephemerals.append({
            "channel": channel, "user": user, "ts": ts, "text": text, "blocks": blocks,
            "thread_ts": args.get("thread_ts"), "source": "chat.postEphemeral",
        })
        return {"message_ts": ts}

    def _chat_delete(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        message = self._message(channel, args.get("ts"))
        if message["user"] != BOT_USER_ID:
            raise SlackApiError("cant_delete_message")
        self._delete(channel, message["ts"])
        return {"channel": channel, "ts": message["ts"]}

    def _chat_get_permalink(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        message = self._message(channel, args.get("message_ts"))
        return {"channel": channel, "permalink": f"{self.url}/archives/{channel}/p{message['ts'].replace('.', '')}"}

    def _conversation(self, channel: str) -> Json:
        return {**self._channels[channel], "topic": {"value": self.topics.get(channel, "")}}

    def _conversations_set_topic(self, args: Json) -> Json:
        channel = self._channel(args.get("channel"))
        topic = args.get("topic") or ""
        if len(topic) > MAX_TOPIC:
            raise SlackApiError("too_long")
        self.topics[channel] = topic
        return {"channel": self._conversation(channel)}

    def _conversations_info(self, args: Json) -> Json:
        return {"channel": self._conversation(self._channel(args.get("channel")))}

    def _conversations_open(self, args: Json) -> Json:
        users = id_list(args.get("users"))
        if not users:
            raise SlackApiError("users_list_not_supplied")
        if len(users) > 1:
            raise SlackApiError("not_supported", messages=["[ERROR] the emulator opens DMs with one user only"])
        return {"channel": {"id": self._open_dm(users[0], "user_not_found")}}

    def _usergroup(self, args: Json) -> str:
        group = required(args, "usergroup", "no_such_subteam")
        if group not in self._usergroups:
            if not self._auto_usergroups:
                raise SlackApiError("no_such_subteam")
            self._usergroups[group] = {"id": group, "handle": group.lower(), "name": group}
        self.usergroup_members.setdefault(group, [])
        return group

    def _usergroup_info(self, group: str, with_users: bool) -> Json:
        members = self.usergroup_members.get(group, [])
        info = {**self._usergroups[group], "team_id": TEAM_ID, "user_count": len(members)}
        return {**info, "users": list(members)} if with_users else info

    def _usergroups_list(self, args: Json) -> Json:
        with_users = flag(args.get("include_users"))
        return {"usergroups": [self._usergroup_info(g, with_users) for g in self._usergroups]}

    def _usergroups_users_list(self, args: Json) -> Json:
        return {"users": list(self.usergroup_members[self._usergroup(args)])}

    def _usergroups_users_update(self, args: Json) -> Json:
        group = self._usergroup(args)
        if "users" not in args:
            raise SlackApiError("no_users_provided")
        users = id_list(args["users"])
        if not users:
            raise SlackApiError("invalid_users")
        for user in users:
            try:
                self.user(user)
            except LookupError:
                raise SlackApiError("invalid_users") from None
        self.usergroup_members[group] = users
        return {"usergroup": self._usergroup_info(group, with_users=True)}

    def _users_info(self, args: Json) -> Json:
        try:
            return {"user": self.user(required(args, "user", "user_not_found"))}
        except LookupError:
            raise SlackApiError("user_not_found") from None

    def _users_lookup_by_email(self, args: Json) -> Json:
        """As Slack's users.lookupByEmail: the user whose profile has the email (case-insensitive), else
        `users_not_found`; bots never match."""
        email = required(args, "email", "invalid_email").strip().lower()
        for user_id, given in (self._users or {}).items():
            if str(given.get("email", "")).lower() == email:
                return {"user": self.user(user_id)}
        raise SlackApiError("users_not_found")

    def _views_open(self, args: Json) -> Json:
        grant = self._take_trigger(args.get("trigger_id"))
        view = self._view_arg(args)
        return {"view": self._store_view("views.open", grant.user, view)}

    def _views_push(self, args: Json) -> Json:
        grant = self._take_trigger(args.get("trigger_id"))
        view = self._view_arg(args)
        current = next(
            (v["view_id"] for v in reversed(self.views) if v["user"] == grant.user and v["method"] != "views.publish"),
            None,
        )
        if current is None:
            raise SlackApiError("not_found")
        return {"view": self._store_view("views.push", grant.user, view, previous=current)}

    def _views_update(self, args: Json) -> Json:
        view_id = args.get("view_id") or next(
            (vid for vid, v in self._open_views.items() if v.get("external_id") == args.get("external_id")), None
        )
        current = self._open_views.get(view_id or "")
        if current is None:
            raise SlackApiError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise SlackApiError("hash_conflict")
        view = self._view_arg(args)
        user = next(v["user"] for v in self.views if v["view_id"] == view_id)
        return {"view": self._store_view("views.update", user, view, view_id, current["previous_view_id"])}

    def _views_publish(self, args: Json) -> Json:
        user = required(args, "user_id", "user_not_found")
        view = self._view_arg(args)
        if view["type"] != "home":
            raise SlackApiError("invalid_arguments", messages=["[ERROR] must be home [json-pointer:/view/type]"])
        self.home[user] = self._store_view("views.publish", user, view)
        return {"view": self.home[user]}

    def _files_get_upload_url(self, args: Json) -> Json:
        filename = required(args, "filename")
        try:
            length = int(required(args, "length"))
        except ValueError:
            raise SlackApiError("invalid_arguments") from None
        file_id = self._new_id("F")
        self._uploads[file_id] = {"id": file_id, "name": filename, "length": length, "content": None}
        return {"file_id": file_id, "upload_url": f"{self.url}/upload/{file_id}"}

    def _files_complete_upload(self, args: Json) -> Json:
        listed = json_arg(required(args, "files"), "invalid_arguments")
        if not isinstance(listed, list) or not listed:
            raise SlackApiError("invalid_arguments")
        uploads = []
        for item in listed:
            upload = self._uploads.get(item.get("id") if isinstance(item, dict) else None)
            if upload is None or upload["content"] is None:
                raise SlackApiError("file_not_found")
            uploads.append({**upload, "title": item.get("title") or upload["name"]})
        channel = self._channel(args["channel_id"]) if args.get("channel_id") else None
        shared = [{"id": u["id"], "name": u["name"], "title": u["title"], "size": len(u["content"])} for u in uploads]
        # Sharing a file posts a message carrying it, in the thread when thread_ts is given.
        message_ts = None
        if channel is not None:
            comment = args.get("initial_comment") or ""
            message_ts = self._post(channel, comment, None, args.get("thread_ts"), shared)["ts"]
        for upload in uploads:
            del self._uploads[upload["id"]]
            self.files.append({
                **upload, "channel": channel, "thread_ts": args.get("thread_ts"),
                "initial_comment": args.get("initial_comment"), "message_ts": message_ts,
            })
        return {"files": shared}
