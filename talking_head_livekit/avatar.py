"""The agent side of the self-hosted avatar: what a LiveKit voice agent adds to show our talking head.

    avatar = AvatarSession(image_url="https://.../portrait.jpg", launcher=RunPodAvatarJob("<endpoint id>"))
    await avatar.start(session, room=ctx.room)
    await session.start(agent=..., room=ctx.room)

`start` mints the avatar's own access token (livekit-api, from LIVEKIT_API_KEY / LIVEKIT_API_SECRET:
the avatar's identity, a roomJoin grant to this room, kind "agent", and `lk.publish_on_behalf`
naming the agent so that its users see the avatar's tracks as the agent's), starts the avatar
worker with it (a process beside the agent, or a job on a RunPod endpoint), and routes the agent's
speech to the avatar's participant with livekit's DataStreamAudioOutput, which waits for the
avatar's video before the agent's first words. The worker's side is handler/livekit_door.py.

This module needs livekit-agents (and aiohttp, which it brings) only: not the worker's code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from livekit import api, rtc
from livekit.agents.voice.avatar import AvatarSession as LiveKitAvatarSession
from livekit.agents.voice.avatar import DataStreamAudioOutput

log = logging.getLogger(__name__)

#: livekit.agents.types.ATTRIBUTE_PUBLISH_ON_BEHALF
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
DEFAULT_AVATAR_IDENTITY = "talking-head-avatar"
# The token only has to let the avatar join (LiveKit refreshes a joined participant's own), but a
# RunPod job may wait in the queue for a worker first: the worker refuses a token that expired.
DEFAULT_TOKEN_TTL = datetime.timedelta(minutes=30)
# Starting a RunPod job or a process, and stopping one: every request and wait ends by then.
REQUEST_SECONDS = 30.0
STOP_SECONDS = 10.0
RUNPOD_API = "https://api.runpod.ai/v2"


def mint_avatar_token(
    *, room: str, agent_identity: str, avatar_identity: str = DEFAULT_AVATAR_IDENTITY, api_key: str | None = None,
    api_secret: str | None = None, ttl: datetime.timedelta = DEFAULT_TOKEN_TTL,
) -> str:
    """The avatar's access token: it joins `room` as `avatar_identity`, publishing on behalf of the agent."""
    key, secret = api_key or os.environ.get("LIVEKIT_API_KEY"), api_secret or os.environ.get("LIVEKIT_API_SECRET")
    return (
        api.AccessToken(key, secret)
        .with_identity(avatar_identity)
        .with_name("Talking head")
        .with_kind("agent")
        .with_attributes({PUBLISH_ON_BEHALF: agent_identity})
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_ttl(ttl)
        .to_jwt()
    )


def portrait_fields(
    *, image_path: str | os.PathLike[str] | None = None, image_url: str | None = None, avatar_id: str | None = None,
) -> dict[str, str]:
    """The portrait as the worker's fields: exactly one of a local file (sent as base64), a URL, a preset id."""
    given = [name for name, value in (("image_path", image_path), ("image_url", image_url), ("avatar_id", avatar_id))
             if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of image_path, image_url, avatar_id (given: {', '.join(given) or 'none'})")
    if image_path is not None:
        return {"image_file": base64.b64encode(Path(image_path).read_bytes()).decode()}
    if image_url is not None:
        return {"image_url": image_url}
    return {"avatar_id": str(avatar_id)}


class AvatarLauncher(Protocol):
    """Starts the avatar worker for one live job input (`{"live": {...}}`), and stops it."""

    async def launch(self, job_input: dict[str, Any]) -> None: ...

    async def stop(self) -> None: ...


class LocalAvatarProcess:
    """The avatar as a process beside the agent: `python -m handler.livekit_job` in the worker's checkout.

    The input (token included) goes to its stdin, never its command line; its environment is this
    process's plus `env` (MODEL_BACKEND, PRESET_AVATARS_DIR, ...). `stop` sends SIGTERM, and kills it
    if it has not left the room within STOP_SECONDS.
    """

    def __init__(self, worker_dir: str | os.PathLike[str] | None = None, python: str = sys.executable,
                 env: dict[str, str] | None = None) -> None:
        self._worker_dir = str(worker_dir) if worker_dir is not None else None
        self._python = python
        self._env = {**os.environ, **(env or {})}
        self._process: asyncio.subprocess.Process | None = None
        #: the live job's result, once the process has ended
        self.result: dict[str, Any] | None = None

    async def launch(self, job_input: dict[str, Any]) -> None:
        self._process = await asyncio.create_subprocess_exec(
            self._python, "-m", "handler.livekit_job", cwd=self._worker_dir, env=self._env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(job_input).encode())
        await asyncio.wait_for(self._process.stdin.drain(), REQUEST_SECONDS)
        self._process.stdin.close()

    async def wait(self, timeout_seconds: float) -> dict[str, Any] | None:
        """The live job's result once the process ends by itself; TimeoutError if it has not by then."""
        process = self._process
        if process is None:
            return self.result
        output, _ = await asyncio.wait_for(process.communicate(), timeout_seconds)
        self._process = None
        return self._read_result(output)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), STOP_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            log.warning("the avatar process did not stop within %g s and was killed", STOP_SECONDS)
            return
        self._read_result(output)

    def _read_result(self, output: bytes) -> dict[str, Any] | None:
        lines = output.decode(errors="replace").strip().splitlines()
        with contextlib.suppress(ValueError):
            self.result = json.loads(lines[-1]) if lines else None
        outcome = self.result or {}
        log.info("the avatar process ended: %s", outcome.get("end_reason") or outcome.get("error"))
        return self.result


class RunPodAvatarJob:
    """The avatar as a job on a RunPod endpoint running this worker: it scales to zero between calls.

    `launch` submits the live job (POST /run) and returns once RunPod has queued it; the job joins
    the room when a worker takes it, and ends when the agent leaves. `stop` cancels it.
    """

    def __init__(self, endpoint_id: str, api_key: str | None = None, api_base: str = RUNPOD_API) -> None:
        self._endpoint = f"{api_base.rstrip('/')}/{endpoint_id}"
        self._api_key = api_key or os.environ.get("RUNPOD_API_KEY", "")
        if not self._api_key:
            raise ValueError("RunPodAvatarJob needs the endpoint's API key: pass api_key or set RUNPOD_API_KEY")
        #: RunPod's id of the live job, once submitted
        self.job_id: str | None = None

    async def launch(self, job_input: dict[str, Any]) -> None:
        answer = await self._post("/run", {"input": job_input})
        job_id = answer.get("id")
        if not isinstance(job_id, str):
            raise RuntimeError(f"RunPod did not queue the avatar job (it answered {sorted(answer)})")
        self.job_id = job_id
        log.info("avatar job %s queued on RunPod", job_id)

    async def stop(self) -> None:
        job_id, self.job_id = self.job_id, None
        if job_id is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, RuntimeError):
                await self._post(f"/cancel/{job_id}", None)

    async def _post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
        headers = {"Authorization": f"Bearer {self._api_key}"}
        async with aiohttp.ClientSession(timeout=timeout) as client:
            async with client.post(self._endpoint + path, json=body, headers=headers) as response:
                if response.status >= 400:
                    raise RuntimeError(f"RunPod answered HTTP {response.status} to POST {path.split('/')[1]}")
                answer = await response.json(content_type=None)
        return answer if isinstance(answer, dict) else {}


class AvatarSession(LiveKitAvatarSession):
    """Our self-hosted talking head as a LiveKit agent's avatar, started like the hosted avatar plugins.

    The portrait is one of `image_path` (a local file), `image_url`, `avatar_id` (a preset of the
    worker's PRESET_AVATARS_DIR); `resolution` ("512*512") and `seed` go to the worker as a job's do.
    `launcher` starts the worker: LocalAvatarProcess() (the default) or RunPodAvatarJob(endpoint_id).
    """

    def __init__(
        self, *, image_path: str | os.PathLike[str] | None = None, image_url: str | None = None,
        avatar_id: str | None = None, resolution: str | None = None, seed: int | None = None,
        launcher: AvatarLauncher | None = None, avatar_identity: str = DEFAULT_AVATAR_IDENTITY,
        livekit_url: str | None = None, api_key: str | None = None, api_secret: str | None = None,
    ) -> None:
        super().__init__()
        self._fields: dict[str, Any] = {
            **portrait_fields(image_path=image_path, image_url=image_url, avatar_id=avatar_id)}
        if resolution is not None:
            self._fields["resolution"] = resolution
        if seed is not None:
            self._fields["seed"] = seed
        self._launcher: AvatarLauncher = launcher or LocalAvatarProcess()
        self._avatar_identity = avatar_identity
        self._livekit_url = livekit_url
        self._api_key, self._api_secret = api_key, api_secret

    @property
    def avatar_identity(self) -> str:
        return self._avatar_identity

    @property
    def provider(self) -> str:
        return "talking-head-worker"

    async def start(self, agent_session: Any, room: rtc.Room) -> None:
        await super().start(agent_session, room)
        url = self._livekit_url or os.environ.get("LIVEKIT_URL")
        if not url:
            raise ValueError("AvatarSession needs the LiveKit server's URL: pass livekit_url or set LIVEKIT_URL")
        agent_identity = room.local_participant.identity
        token = mint_avatar_token(room=room.name, agent_identity=agent_identity, avatar_identity=self._avatar_identity,
                                  api_key=self._api_key, api_secret=self._api_secret)
        await self._launcher.launch({"live": {
            "livekit_url": url, "livekit_token": token, "agent_identity": agent_identity, **self._fields,
        }})
        # Speech goes to the avatar, which plays it in the room with the video; the agent waits for
        # the avatar's video track before it speaks, and for its playback reports.
        agent_session.output.replace_audio_tail(DataStreamAudioOutput(
            room, destination_identity=self._avatar_identity, wait_remote_track=rtc.TrackKind.KIND_VIDEO,
            wait_playback_start=True,
        ))

    async def aclose(self) -> None:
        try:
            await self._launcher.stop()
        finally:
            await super().aclose()
