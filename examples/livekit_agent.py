"""A LiveKit voice agent that shows our self-hosted talking head (docs/LIVEKIT.md).

Run it from the repository root beside a LiveKit server (LiveKit Cloud, or `livekit-server --dev`):

    export LIVEKIT_URL=wss://<your project>.livekit.cloud LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    python examples/livekit_agent.py dev

and join its room from the LiveKit Agents Playground (or any LiveKit client). The agent listens,
answers through LiveKit Inference's STT, LLM and TTS, and its speech is shown by the avatar:

- by default the avatar runs as a process beside this agent (`python -m handler.livekit_job`,
  this checkout's worker with MODEL_BACKEND=lite: any CPU does 25 fps);
- with AVATAR_RUNPOD_ENDPOINT_ID (and RUNPOD_API_KEY) set, it runs as a live job on that RunPod
  endpoint instead, which scales to zero between calls.

The portrait is AVATAR_IMAGE (a file; default assets/portrait.jpg), or AVATAR_IMAGE_URL, or the
worker's preset AVATAR_ID.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, inference

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # talking_head_livekit, when the checkout is not installed

from talking_head_livekit import AvatarSession, LocalAvatarProcess, RunPodAvatarJob  # noqa: E402

server = AgentServer()


def avatar_launcher() -> LocalAvatarProcess | RunPodAvatarJob:
    """Where the avatar worker runs: a RunPod endpoint if one is named, else a process beside the agent."""
    endpoint = os.environ.get("AVATAR_RUNPOD_ENDPOINT_ID")
    if endpoint:
        return RunPodAvatarJob(endpoint)
    return LocalAvatarProcess(worker_dir=ROOT, env={"MODEL_BACKEND": os.environ.get("MODEL_BACKEND", "lite")})


def portrait() -> dict[str, Any]:
    if os.environ.get("AVATAR_ID"):
        return {"avatar_id": os.environ["AVATAR_ID"]}
    if os.environ.get("AVATAR_IMAGE_URL"):
        return {"image_url": os.environ["AVATAR_IMAGE_URL"]}
    return {"image_path": os.environ.get("AVATAR_IMAGE", str(ROOT / "assets" / "portrait.jpg"))}


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session: AgentSession = AgentSession(
        stt=inference.STT("deepgram/nova-3"),
        llm=inference.LLM("openai/gpt-4.1-mini"),
        tts=inference.TTS("cartesia/sonic-3"),
        # the avatar plays the speech: it cannot pause it, so a false interruption cannot be resumed
        resume_false_interruption=False,
    )
    # The few lines an agent adds: the avatar joins the room and the agent's speech goes to it.
    avatar = AvatarSession(**portrait(), resolution=os.environ.get("AVATAR_RESOLUTION", "512*512"),
                           launcher=avatar_launcher())
    await avatar.start(session, room=ctx.room)

    await session.start(agent=Agent(instructions="You are a friendly assistant with a face. Keep answers short."),
                        room=ctx.room)
    await session.generate_reply(instructions="Greet the user and offer your help.")


if __name__ == "__main__":
    cli.run_app(server)
