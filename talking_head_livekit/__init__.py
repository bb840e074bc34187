"""A self-hosted talking-head avatar for LiveKit voice agents (docs/LIVEKIT.md)."""

from talking_head_livekit.avatar import (
    AvatarLauncher,
    AvatarSession,
    LocalAvatarProcess,
    RunPodAvatarJob,
    mint_avatar_token,
    portrait_fields,
)

__all__ = [
    "AvatarLauncher",
    "AvatarSession",
    "LocalAvatarProcess",
    "RunPodAvatarJob",
    "mint_avatar_token",
    "portrait_fields",
]
