"""Episode videos for `jfedrl eval --video`: a jitted rollout, then frames drawn on the host.

The rollout is one `lax.scan` that keeps every step's env state; frames are drawn
afterwards from the stacked states with Pillow (no display, nothing downloaded),
one small renderer per classic-control environment, in the geometry of Gym's
classic-control renderers (which gymnax's own `gymnax.visualize` calls, through
gymnasium and pygame, which this project does not install). GIF is written by
Pillow; MP4 by `ffmpeg` from PATH, if there is one.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jfedrl.schema.checks import ConfigError

FORMATS = ("gif", "mp4")
SIZE = (300, 200)
#: Frames per second of the written video (Gym's classic control renders at 50).
FPS = 50

Renderer = Callable[[Any, Any], Image.Image]
"""`(one step's env state, env params) -> frame` (numpy leaves, one client)."""


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", SIZE, "white")
    return image, ImageDraw.Draw(image)


def _f(value: Any) -> float:
    return float(np.asarray(value))


def render_cartpole(state: Any, params: Any) -> Image.Image:
    """The cart at `x` on its track, the pole at angle `theta` (Gym's layout)."""
    image, draw = _canvas()
    width, height = SIZE
    world = 2 * 2.4
    scale = width / world
    track = height * 0.7
    cart_x = _f(state.x) * scale + width / 2
    draw.line([(0, track), (width, track)], fill="black")
    draw.rectangle([cart_x - 15, track - 8, cart_x + 15, track + 8], fill="black")
    pole = 2 * _f(params.length) * scale
    theta = _f(state.theta)
    tip = (cart_x + pole * math.sin(theta), track - pole * math.cos(theta))
    draw.line([(cart_x, track), tip], fill=(202, 152, 101), width=6)
    draw.ellipse([cart_x - 3, track - 3, cart_x + 3, track + 3], fill=(129, 132, 203))
    return image


def render_pendulum(state: Any, params: Any) -> Image.Image:
    """The rod at angle `theta` from upright, about a fixed pivot."""
    image, draw = _canvas()
    width, height = SIZE
    centre = (width / 2, height / 2)
    length = 0.4 * height * _f(params.l)
    theta = _f(state.theta)
    tip = (centre[0] + length * math.sin(theta), centre[1] - length * math.cos(theta))
    draw.line([centre, tip], fill=(204, 77, 77), width=8)
    draw.ellipse([centre[0] - 4, centre[1] - 4, centre[0] + 4, centre[1] + 4], fill="black")
    return image


def render_mountain_car(state: Any, params: Any) -> Image.Image:
    """The car at `position` on the hill y = sin(3x), the goal flag."""
    image, draw = _canvas()
    width, height = SIZE
    low, high = _f(params.min_position), _f(params.max_position)

    def point(x: float) -> tuple[float, float]:
        return ((x - low) / (high - low) * width, height * (0.85 - 0.35 * (math.sin(3 * x) + 1)))

    xs = np.linspace(low, high, 100)
    draw.line([point(x) for x in xs], fill="black", width=2)
    goal = point(_f(params.goal_position))
    draw.line([goal, (goal[0], goal[1] - 25)], fill="black")
    draw.polygon(
        [(goal[0], goal[1] - 25), (goal[0] + 12, goal[1] - 20), (goal[0], goal[1] - 15)],
        fill="gold",
    )
    car = point(_f(state.position))
    draw.ellipse([car[0] - 7, car[1] - 14, car[0] + 7, car[1]], fill="black")
    return image


def render_acrobot(state: Any, params: Any) -> Image.Image:
    """The two links at `joint_angle1` and `joint_angle2`, hanging from the pivot."""
    image, draw = _canvas()
    width, height = SIZE
    l1, l2 = _f(params.link_length_1), _f(params.link_length_2)
    scale = 0.45 * height / (l1 + l2)
    a1, a2 = _f(state.joint_angle1), _f(state.joint_angle2)
    pivot = (width / 2, height / 2)
    elbow = (pivot[0] + l1 * scale * math.sin(a1), pivot[1] + l1 * scale * math.cos(a1))
    end = (elbow[0] + l2 * scale * math.sin(a1 + a2), elbow[1] + l2 * scale * math.cos(a1 + a2))
    draw.line(
        [(0, pivot[1] - (l1 + l2) * scale), (width, pivot[1] - (l1 + l2) * scale)], fill="black"
    )
    draw.line([pivot, elbow, end], fill=(0, 204, 204), width=6)
    draw.ellipse([pivot[0] - 4, pivot[1] - 4, pivot[0] + 4, pivot[1] + 4], fill="black")
    return image


RENDERERS: dict[str, Renderer] = {
    "CartPole-v1": render_cartpole,
    "Pendulum-v1": render_pendulum,
    "MountainCar-v0": render_mountain_car,
    "MountainCarContinuous-v0": render_mountain_car,
    "Acrobot-v1": render_acrobot,
}


def renderer_for(env_name: str) -> Renderer:
    """The renderer of `env_name`, or a ConfigError naming the renderable environments."""
    if env_name in RENDERERS:
        return RENDERERS[env_name]
    if env_name.startswith("brax-"):
        raise ConfigError(
            f"--video: {env_name}: Brax video is not supported (brax 0.14's brax.io.image "
            "renders through MuJoCo's OpenGL renderer, which needs an OpenGL context: "
            "EGL or OSMesa system libraries); renderable: " + ", ".join(RENDERERS)
        )
    raise ConfigError(f"--video: no renderer for {env_name}; renderable: {', '.join(RENDERERS)}")


def check_format(video_format: str) -> None:
    """Raises a ConfigError for an unknown format, or mp4 without ffmpeg on PATH."""
    if video_format not in FORMATS:
        raise ConfigError(
            f"--video-format: must be one of {', '.join(FORMATS)}, got {video_format!r}"
        )
    if video_format == "mp4" and shutil.which("ffmpeg") is None:
        raise ConfigError(
            "--video-format mp4: ffmpeg is not on PATH (install it, or use --video-format gif)"
        )


def frames_of(renderer: Renderer, states: Any, params: Any, length: int) -> list[Image.Image]:
    """Frames of the first `length` steps of stacked `states` (leading axis = step).

    Each frame is stamped with its step, which also keeps two frames of a still
    scene distinct (a GIF writer merges identical consecutive frames).
    """
    import jax

    host = jax.device_get(states)
    frames = []
    for t in range(length):
        frame = renderer(jax.tree.map(lambda x, t=t: x[t], host), params)
        ImageDraw.Draw(frame).text((5, 5), f"step {t}", fill="black")
        frames.append(frame)
    return frames


def write(frames: list[Image.Image], path: Path, video_format: str) -> Path:
    """Writes `frames` as a GIF (Pillow) or an MP4 (ffmpeg); returns the path."""
    path = path.with_suffix("." + video_format)
    if video_format == "gif":
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // FPS, loop=0)
        return path
    width, height = frames[0].size
    command = [
        shutil.which("ffmpeg") or "ffmpeg",
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(FPS),
        "-i",
        "-",
        "-pix_fmt",
        "yuv420p",
        str(path),
    ]
    data = b"".join(np.asarray(frame.convert("RGB")).tobytes() for frame in frames)
    subprocess.run(command, input=data, check=True)
    return path
