"""LIVE_ICE_SERVERS: the STUN/TURN servers WebRTC sessions gather candidates through, checked at worker start.

Read here rather than in the WebRTC door so that a bad value fails the start (handler/settings.py)
on a worker without the `live` extra too, and names the fix without repeating the value: TURN
entries carry credentials.
"""

from __future__ import annotations

import json
from typing import Any

# ICE servers an operator may name, at most (each costs a gathering round trip).
MAX_ICE_SERVERS = 4
EXAMPLE = '[{"urls": "stun:stun.example.com:3478"}]'


def parse_ice_servers(raw: str | None) -> tuple[dict[str, Any], ...]:
    """LIVE_ICE_SERVERS as a browser's RTCConfiguration.iceServers takes them: JSON, a list of
    {"urls": "stun:host:port" | [...], "username"?, "credential"?}. Raises ValueError naming the fix."""
    if raw is None or not raw.strip():
        return ()
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError(f"LIVE_ICE_SERVERS is not JSON; set it to e.g. {EXAMPLE}.") from None
    if not isinstance(value, list) or len(value) > MAX_ICE_SERVERS:
        raise ValueError(f"LIVE_ICE_SERVERS must be a list of at most {MAX_ICE_SERVERS} objects like {EXAMPLE} "
                         '(TURN: with "username" and "credential").')
    servers = []
    for server in value:
        urls = server.get("urls") if isinstance(server, dict) else None
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list or not all(
                isinstance(url, str) and url.startswith(("stun:", "turn:", "turns:")) for url in url_list):
            raise ValueError('LIVE_ICE_SERVERS: each server needs "urls", a stun:, turn: or turns: URL or a list '
                             f"of them, as in {EXAMPLE}.")
        extra = {key: server[key] for key in ("username", "credential") if isinstance(server.get(key), str)}
        servers.append({"urls": url_list, **extra})
    return tuple(servers)
