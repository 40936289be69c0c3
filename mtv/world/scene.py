"""Procedural scenes of the mini-world: what is where, seen from which cameras, under which light.

A scene is a pure function of (seed, index): the same pair always gives the same objects, floor,
sky, light and cameras, on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtv.world.geometry import FOOTPRINT, SHAPE_NAMES

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.10, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.92, 0.82, 0.15),
    "purple": (0.50, 0.18, 0.70),
    "orange": (0.95, 0.50, 0.10),
    "cyan": (0.10, 0.75, 0.80),
    "white": (0.92, 0.92, 0.92),
    "gray": (0.45, 0.45, 0.47),
    "brown": (0.45, 0.28, 0.12),
}
SIZES: dict[str, float] = {"small": 0.32, "large": 0.55}  # uniform scale of the unit shapes
MATERIALS = ("matte", "shiny")
FLOORS = ("checkered", "striped", "tiled", "speckled", "plain")
FLOOR_COLORS: dict[str, tuple[float, float, float]] = {
    "sand": (0.76, 0.70, 0.55),
    "slate": (0.35, 0.38, 0.42),
    "wood": (0.55, 0.40, 0.25),
    "moss": (0.40, 0.50, 0.30),
    "cream": (0.85, 0.82, 0.74),
    "clay": (0.62, 0.42, 0.34),
}
WORLD_RADIUS = 1.8  # objects are placed within this disc on the floor
MAX_OBJECTS = 6
# Range of the cameras' distance to the scene centre (world units). The default frames the whole
# disc of objects, so an object covers about 1.6 patches of 8 px at 64 px; closer cameras show
# fewer objects, larger (a world setting: `data.source.camera_distance`).
CAMERA_DISTANCE: tuple[float, float] = (5.0, 6.5)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    material: str
    x: float
    z: float
    yaw: float  # rotation about the vertical axis (radians)

    @property
    def scale(self) -> float:
        return SIZES[self.size]

    @property
    def name(self) -> str:
        """The entity name a grounding label uses."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Camera:
    position: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_degrees: float

    def world_to_camera(self) -> np.ndarray:
        """4x4 rigid transform, camera looking down +z, x right, y down (OpenCV convention)."""
        eye, target = np.asarray(self.position), np.asarray(self.target)
        forward = target - eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        pose = np.eye(4)
        pose[:3, :3] = rotation
        pose[:3, 3] = -rotation @ eye
        return pose

    def intrinsics(self, size: int) -> np.ndarray:
        """3x3 pinhole matrix for a size x size image (pixel centres at +0.5)."""
        focal = 0.5 * size / math.tan(math.radians(self.fov_degrees) / 2)
        return np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Scene:
    seed: int
    index: int
    objects: tuple[SceneObject, ...]
    floor: str
    floor_colors: tuple[str, str]
    floor_scale: float
    floor_angle: float
    sky: tuple[tuple[float, float, float], tuple[float, float, float]]  # horizon, zenith
    light_direction: tuple[float, float, float]  # towards the light
    light_intensity: float
    ambient: float
    cameras: tuple[Camera, ...]


def _place_objects(rng: np.random.Generator, count: int) -> list[SceneObject]:
    objects: list[SceneObject] = []
    footprints: list[tuple[float, float, float]] = []
    attempts = 0
    while len(objects) < count and attempts < 200:
        attempts += 1
        shape = SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]
        size = ("small", "large")[rng.integers(2)]
        radius = FOOTPRINT[shape] * SIZES[size]
        r = WORLD_RADIUS * math.sqrt(rng.random())
        angle = 2 * math.pi * rng.random()
        x, z = r * math.cos(angle), r * math.sin(angle)
        if any(math.hypot(x - fx, z - fz) < radius + fr + 0.05 for fx, fz, fr in footprints):
            continue
        footprints.append((x, z, radius))
        objects.append(
            SceneObject(
                shape=shape,
                color=list(COLORS)[rng.integers(len(COLORS))],
                size=size,
                material=MATERIALS[rng.integers(len(MATERIALS))],
                x=x,
                z=z,
                yaw=float(2 * math.pi * rng.random()),
            )
        )
    return objects


def _cameras(
    rng: np.random.Generator, views: int, distance_range: tuple[float, float]
) -> tuple[Camera, ...]:
    base_azimuth = 2 * math.pi * rng.random()
    cameras = []
    for view in range(views):
        # Views spread around the scene so that multi-view pairs see it from clearly different
        # angles yet share most of it.
        azimuth = base_azimuth + view * rng.uniform(0.5, 1.1)
        elevation = math.radians(rng.uniform(22.0, 50.0))
        # One draw whatever the range, so a scene's objects, light and floor stay the same.
        distance = rng.uniform(*distance_range)
        position = (
            distance * math.cos(elevation) * math.cos(azimuth),
            distance * math.sin(elevation),
            distance * math.cos(elevation) * math.sin(azimuth),
        )
        target = (rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.5), rng.uniform(-0.3, 0.3))
        cameras.append(Camera(position, target, float(rng.uniform(40.0, 50.0))))
    return tuple(cameras)


def sample_scene(
    seed: int,
    index: int,
    views: int = 1,
    n_objects: int | None = None,
    camera_distance: tuple[float, float] = CAMERA_DISTANCE,
) -> Scene:
    """The scene number `index` of the world `seed`, with `views` cameras at a distance drawn
    from `camera_distance`; `n_objects` fixes the object count (otherwise drawn from
    1..MAX_OBJECTS)."""
    rng = np.random.default_rng([seed, index])
    drawn = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = _place_objects(rng, drawn if n_objects is None else n_objects)
    floor_colors = rng.choice(list(FLOOR_COLORS), size=2, replace=False)
    horizon = tuple(float(v) for v in rng.uniform(0.65, 0.95, size=3))
    zenith = tuple(float(v) for v in rng.uniform(0.15, 0.6, size=3) * np.array([0.7, 0.85, 1.0]))
    light_azimuth = 2 * math.pi * rng.random()
    light_elevation = math.radians(rng.uniform(30.0, 75.0))
    light = (
        math.cos(light_elevation) * math.cos(light_azimuth),
        math.sin(light_elevation),
        math.cos(light_elevation) * math.sin(light_azimuth),
    )
    return Scene(
        seed=seed,
        index=index,
        objects=tuple(objects),
        floor=FLOORS[rng.integers(len(FLOORS))],
        floor_colors=(str(floor_colors[0]), str(floor_colors[1])),
        floor_scale=float(rng.uniform(0.35, 0.9)),
        floor_angle=float(rng.uniform(0, math.pi)),
        sky=(horizon, zenith),  # type: ignore[arg-type]
        light_direction=light,
        light_intensity=float(rng.uniform(0.7, 1.0)),
        ambient=float(rng.uniform(0.25, 0.4)),
        cameras=_cameras(rng, views, camera_distance),
    )
