"""Analytic ray casting of the mini-world's shapes, batched over rays in torch.

Every shape lives in its own frame: y up, resting on y = 0, about one unit in radius. A ray in
that frame is `o + t d`; with a rigid motion and a uniform scale applied to both `o` and `d`, the
parameter `t` is the same as in the world frame, so hits from different objects compare directly.
Functions return the hit distance `t` (inf where the ray misses) and the local surface normal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-4


def _planes(
    normals: list[tuple[float, float, float]], offsets: list[float]
) -> tuple[Tensor, Tensor]:
    n = torch.tensor(normals, dtype=torch.float32)
    n = n / n.norm(dim=-1, keepdim=True)
    d = torch.tensor(offsets, dtype=torch.float32) * torch.tensor(normals).norm(dim=-1).reciprocal()
    return n, d


def _convex(
    points: list[tuple[float, float, float]], faces: list[list[int]]
) -> tuple[Tensor, Tensor]:
    """Half-spaces n . x <= d of a convex polyhedron from its vertices and faces (any winding)."""
    p = torch.tensor(points, dtype=torch.float32)
    centre = p.mean(0)
    normals, offsets = [], []
    for face in faces:
        a, b, c = p[face[0]], p[face[1]], p[face[2]]
        n = torch.linalg.cross(b - a, c - a)
        n = n / n.norm()
        if torch.dot(n, centre - a) > 0:
            n = -n
        normals.append(n)
        offsets.append(torch.dot(n, a))
    return torch.stack(normals), torch.stack(offsets)


CUBE_HALF = 0.85
PYRAMID_HEIGHT = 1.6
PRISM_HEIGHT = 1.4
CYLINDER_RADIUS, CYLINDER_HEIGHT = 0.85, 1.7
CONE_RADIUS, CONE_HEIGHT = 1.0, 2.0

_h = CUBE_HALF
CUBE = _convex(
    [(x, y, z) for x in (-_h, _h) for y in (0.0, 2 * _h) for z in (-_h, _h)],
    [[0, 1, 3], [4, 5, 7], [0, 1, 5], [2, 3, 7], [0, 2, 6], [1, 3, 7]],
)
PYRAMID = _convex(
    [(-1, 0, -1), (1, 0, -1), (1, 0, 1), (-1, 0, 1), (0, PYRAMID_HEIGHT, 0)],
    [[0, 1, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]],
)
PRISM = _convex(  # a triangular "tent": ridge along z
    [
        (-1, 0, -0.9),
        (1, 0, -0.9),
        (0, PRISM_HEIGHT, -0.9),
        (-1, 0, 0.9),
        (1, 0, 0.9),
        (0, PRISM_HEIGHT, 0.9),
    ],
    [[0, 1, 2], [3, 4, 5], [0, 1, 4], [1, 2, 5], [2, 0, 3]],
)
OCTAHEDRON = _convex(  # standing on a vertex, centred at height 1
    [(1, 1, 0), (-1, 1, 0), (0, 2, 0), (0, 0, 0), (0, 1, 1), (0, 1, -1)],
    [[0, 2, 4], [0, 2, 5], [1, 2, 4], [1, 2, 5], [0, 3, 4], [0, 3, 5], [1, 3, 4], [1, 3, 5]],
)


def intersect_convex(
    origin: Tensor, direction: Tensor, planes: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """Cyrus-Beck clipping of rays (..., 3) against half-spaces n . x <= d."""
    normals, offsets = planes
    normals, offsets = normals.to(origin), offsets.to(origin)
    denom = direction @ normals.T  # (..., P)
    num = offsets - origin @ normals.T  # (..., P)  >= 0 inside
    parallel = denom.abs() < 1e-9
    t_plane = num / torch.where(parallel, torch.ones_like(denom), denom)
    entering = (denom < 0) & ~parallel
    exiting = (denom > 0) & ~parallel
    t_enter = torch.where(entering, t_plane, torch.full_like(t_plane, -math.inf))
    t_exit = torch.where(exiting, t_plane, torch.full_like(t_plane, math.inf))
    t_in, face = t_enter.max(dim=-1)
    t_out = t_exit.min(dim=-1).values
    outside_parallel = (parallel & (num < 0)).any(dim=-1)
    hit = (t_in <= t_out) & (t_in > EPS) & ~outside_parallel
    t = torch.where(hit, t_in, torch.full_like(t_in, math.inf))
    return t, normals[face]


def _first_positive(*candidates: Tensor) -> Tensor:
    stacked = torch.stack(
        [torch.where(c > EPS, c, torch.full_like(c, math.inf)) for c in candidates]
    )
    return stacked.min(dim=0).values


def _solve_quadratic(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Both roots of a t^2 + b t + c = 0 (NaN-free: inf where there is no real root)."""
    disc = b * b - 4 * a * c
    real = (disc >= 0) & (a.abs() > 1e-12)
    sq = torch.sqrt(torch.clamp(disc, min=0.0))
    safe_a = torch.where(a.abs() > 1e-12, a, torch.ones_like(a))
    t1 = (-b - sq) / (2 * safe_a)
    t2 = (-b + sq) / (2 * safe_a)
    inf = torch.full_like(t1, math.inf)
    low, high = torch.minimum(t1, t2), torch.maximum(t1, t2)
    return torch.where(real, low, inf), torch.where(real, high, inf)


def intersect_sphere(origin: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """Unit sphere centred at (0, 1, 0)."""
    oc = origin - origin.new_tensor([0.0, 1.0, 0.0])
    b = 2 * (oc * direction).sum(-1)
    c = (oc * oc).sum(-1) - 1.0
    a = (direction * direction).sum(-1)
    t1, t2 = _solve_quadratic(a, b, c)
    t = _first_positive(t1, t2)
    normal = oc + t.clamp(max=1e6)[..., None] * direction
    return t, normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-9)


def _cap(origin: Tensor, direction: Tensor, height: float, radius: float) -> Tensor:
    """Distance to the disc y = height, x^2 + z^2 <= radius^2 (inf where missed)."""
    dy = direction[..., 1]
    safe = torch.where(dy.abs() > 1e-9, dy, torch.ones_like(dy))
    t = (height - origin[..., 1]) / safe
    p = origin + t[..., None] * direction
    inside = (p[..., 0] ** 2 + p[..., 2] ** 2 <= radius**2) & (dy.abs() > 1e-9)
    return torch.where(inside, t, torch.full_like(t, math.inf))


def intersect_cylinder(origin: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """Capped cylinder about the y axis: radius CYLINDER_RADIUS, y in [0, CYLINDER_HEIGHT]."""
    r, h = CYLINDER_RADIUS, CYLINDER_HEIGHT
    ox, oz, dx, dz = origin[..., 0], origin[..., 2], direction[..., 0], direction[..., 2]
    t1, t2 = _solve_quadratic(dx * dx + dz * dz, 2 * (ox * dx + oz * dz), ox * ox + oz * oz - r * r)
    sides = []
    for t in (t1, t2):
        y = origin[..., 1] + t.clamp(max=1e6) * direction[..., 1]
        sides.append(torch.where((y >= 0) & (y <= h), t, torch.full_like(t, math.inf)))
    top, bottom = _cap(origin, direction, h, r), _cap(origin, direction, 0.0, r)
    t = _first_positive(sides[0], sides[1], top, bottom)
    p = origin + t.clamp(max=1e6)[..., None] * direction
    side_normal = torch.stack([p[..., 0], torch.zeros_like(t), p[..., 2]], dim=-1) / r
    normal = torch.where(
        (t == top)[..., None],
        origin.new_tensor([0.0, 1.0, 0.0]).expand_as(p),
        torch.where(
            (t == bottom)[..., None], origin.new_tensor([0.0, -1.0, 0.0]).expand_as(p), side_normal
        ),
    )
    return t, normal


def intersect_cone(origin: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """Cone with its base disc (radius CONE_RADIUS) on y = 0 and apex at y = CONE_HEIGHT."""
    r, h = CONE_RADIUS, CONE_HEIGHT
    k2 = (r / h) ** 2
    ox, oy, oz = origin.unbind(-1)
    dx, dy, dz = direction.unbind(-1)
    # x^2 + z^2 = k^2 (h - y)^2
    a = dx * dx + dz * dz - k2 * dy * dy
    b = 2 * (ox * dx + oz * dz + k2 * (h - oy) * dy)
    c = ox * ox + oz * oz - k2 * (h - oy) ** 2
    t1, t2 = _solve_quadratic(a, b, c)
    sides = []
    for t in (t1, t2):
        y = oy + t.clamp(max=1e6) * dy
        sides.append(torch.where((y >= 0) & (y <= h), t, torch.full_like(t, math.inf)))
    base = _cap(origin, direction, 0.0, r)
    t = _first_positive(sides[0], sides[1], base)
    p = origin + t.clamp(max=1e6)[..., None] * direction
    radial = torch.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2).clamp(min=1e-9)
    side = torch.stack([p[..., 0] / radial, torch.full_like(t, r / h), p[..., 2] / radial], dim=-1)
    side = side / side.norm(dim=-1, keepdim=True)
    normal = torch.where(
        (t == base)[..., None], origin.new_tensor([0.0, -1.0, 0.0]).expand_as(p), side
    )
    return t, normal


def intersect(shape: str, origin: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """(t, local normal) of rays against one of SHAPE_NAMES in its local frame."""
    if shape == "sphere":
        return intersect_sphere(origin, direction)
    if shape == "cylinder":
        return intersect_cylinder(origin, direction)
    if shape == "cone":
        return intersect_cone(origin, direction)
    return intersect_convex(origin, direction, POLYHEDRA[shape])


POLYHEDRA = {"cube": CUBE, "pyramid": PYRAMID, "prism": PRISM, "octahedron": OCTAHEDRON}
SHAPE_NAMES = ("sphere", "cube", "cylinder", "cone", "pyramid", "prism", "octahedron")

# Footprint radius on the floor (for placement) and height, in local units.
FOOTPRINT = {
    "sphere": 1.0,
    "cube": CUBE_HALF * math.sqrt(2),
    "cylinder": CYLINDER_RADIUS,
    "cone": CONE_RADIUS,
    "pyramid": math.sqrt(2),
    "prism": math.hypot(1.0, 0.9),
    "octahedron": 1.0,
}

# Bounding spheres (centre height, radius) in local units, to skip rays that cannot hit a shape.
BOUNDS: dict[str, tuple[float, float]] = {
    "sphere": (1.0, 1.0),
    "cube": (CUBE_HALF, CUBE_HALF * math.sqrt(3)),
    "cylinder": (CYLINDER_HEIGHT / 2, math.hypot(CYLINDER_RADIUS, CYLINDER_HEIGHT / 2)),
    "cone": (0.75, 1.25),
    "pyramid": (0.175, math.sqrt(2 + 0.175**2)),
    "prism": (0.343, math.sqrt(1.81 + 0.343**2)),
    "octahedron": (1.0, 1.0),
}

# Semantic keypoints in local coordinates: the same names on every instance of a shape.
KEYPOINTS: dict[str, dict[str, tuple[float, float, float]]] = {
    "sphere": {"top": (0.0, 2.0, 0.0)},
    "cube": {
        f"top_{a}{b}": (sx * CUBE_HALF, 2 * CUBE_HALF, sz * CUBE_HALF)
        for a, sx in (("left", -1), ("right", 1))
        for b, sz in (("back", -1), ("front", 1))
    },
    "cylinder": {"top_centre": (0.0, CYLINDER_HEIGHT, 0.0)},
    "cone": {"apex": (0.0, CONE_HEIGHT, 0.0)},
    "pyramid": {
        "apex": (0.0, PYRAMID_HEIGHT, 0.0),
        **{
            f"base_{a}{b}": (sx, 0.0, sz)
            for a, sx in (("left", -1), ("right", 1))
            for b, sz in (("back", -1), ("front", 1))
        },
    },
    "prism": {"ridge_back": (0.0, PRISM_HEIGHT, -0.9), "ridge_front": (0.0, PRISM_HEIGHT, 0.9)},
    "octahedron": {"top": (0.0, 2.0, 0.0), "left": (-1.0, 1.0, 0.0), "right": (1.0, 1.0, 0.0)},
}

# Keypoints that a turn about the vertical axis maps onto each other share a class: every
# instance is yawed uniformly at random, so nothing in an image tells them apart, and a match to
# any keypoint of the class is right. None: a class the names do not cover (the octahedron has
# four side vertices, two of them named), left out of semantic correspondence.
KEYPOINT_CLASSES: dict[str, dict[str, str | None]] = {
    "sphere": {"top": "top"},
    "cube": dict.fromkeys(KEYPOINTS["cube"], "top_corner"),
    "cylinder": {"top_centre": "top_centre"},
    "cone": {"apex": "apex"},
    "pyramid": {
        "apex": "apex",
        **dict.fromkeys((n for n in KEYPOINTS["pyramid"] if n.startswith("base_")), "base_corner"),
    },
    "prism": {"ridge_back": "ridge_end", "ridge_front": "ridge_end"},
    "octahedron": {"top": "top", "left": None, "right": None},
}
