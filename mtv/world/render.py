"""The mini-world renderer: ray casting of analytic shapes on a textured floor under a sky, with
Lambert + Blinn-Phong shading and cast shadows, batched over images in torch. Every pixel's depth,
instance and class come from the same ray hits that colour it, so the ground truth is exact."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtv.world import geometry
from mtv.world.captions import Visible, caption
from mtv.world.scene import COLORS, FLOOR_COLORS, Scene

# Semantic classes: 0 sky, 1 floor, 2 + index in SHAPE_NAMES for the objects.
CLASS_NAMES = ("sky", "floor", *geometry.SHAPE_NAMES)
# Every (shape, keypoint) pair gets one id, shared by all instances of the shape.
KEYPOINT_IDS: tuple[tuple[str, str], ...] = tuple(
    (shape, name) for shape in geometry.SHAPE_NAMES for name in geometry.KEYPOINTS[shape]
)
MIN_BOX_PIXELS = 4  # fewer visible pixels than this and an object gets no box, name or mention


@dataclass
class RenderedView:
    """One image and its exact ground truth."""

    key: str
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 camera z-depth; inf where the sky is seen
    instance: np.ndarray  # (H, W) uint8: 0 floor or sky, i + 1 for scene.objects[i]
    semantic: np.ndarray  # (H, W) uint8 index into CLASS_NAMES
    boxes: np.ndarray  # (n, 4) float32 xyxy in [0, 1], one per visible object
    box_instances: np.ndarray  # (n,) int32 instance id of each box
    names: list[str]  # (n,) entity names, e.g. "small red cube"
    keypoints: np.ndarray  # (p, 5) float32: instance, keypoint id, x px, y px, visible (0/1)
    intrinsics: np.ndarray  # (3, 3)
    world_to_camera: np.ndarray  # (4, 4), OpenCV axes (x right, y down, z forward)
    caption: str
    scene_index: int
    view: int

    @property
    def disparity(self) -> np.ndarray:
        """Relative disparity 1/depth (0 for the sky), what depth experts predict."""
        return np.where(np.isfinite(self.depth), 1.0 / np.maximum(self.depth, 1e-6), 0.0).astype(
            np.float32
        )


def sample_key(scene_index: int, view: int) -> str:
    return f"{scene_index:08d}_{view}"


def _yaw_matrix(yaw: Tensor) -> Tensor:
    """(n,) angles -> (n, 3, 3) rotations about +y (local -> world)."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack(
        [
            torch.stack([c, zero, s], -1),
            torch.stack([zero, one, zero], -1),
            torch.stack([-s, zero, c], -1),
        ],
        dim=-2,
    )


def _floor_colour(scene: Scene, x: Tensor, z: Tensor) -> Tensor:
    a, b = (torch.tensor(FLOOR_COLORS[c]) for c in scene.floor_colors)
    cos, sin = math.cos(scene.floor_angle), math.sin(scene.floor_angle)
    u = (cos * x - sin * z) / scene.floor_scale
    v = (sin * x + cos * z) / scene.floor_scale
    if scene.floor == "checkered":
        pick = (torch.floor(u) + torch.floor(v)).remainder(2) < 1
    elif scene.floor == "striped":
        pick = torch.floor(u).remainder(2) < 1
    elif scene.floor == "tiled":
        pick = ((u - torch.floor(u) - 0.5).abs() < 0.44) & ((v - torch.floor(v) - 0.5).abs() < 0.44)
    elif scene.floor == "speckled":
        cell = torch.floor(u * 5) * 12.9898 + torch.floor(v * 5) * 78.233
        pick = torch.frac(torch.sin(cell) * 43758.5453).abs() > 0.3
    else:
        pick = torch.ones_like(u, dtype=torch.bool)
    return torch.where(pick[..., None], a, 0.5 * a + 0.5 * b)


class _Batch:
    """Tensors of a batch of (scene, view) pairs: cameras, rays, and per-object slots."""

    def __init__(self, items: list[tuple[Scene, int]], size: int):
        self.items, self.size = items, size
        count = len(items)
        cams = [scene.cameras[view] for scene, view in items]
        poses = np.stack([cam.world_to_camera() for cam in cams])
        self.intrinsics = np.stack([cam.intrinsics(size) for cam in cams])
        self.poses = poses
        rotation = torch.tensor(poses[:, :3, :3], dtype=torch.float32)  # world -> camera
        self.eye = torch.tensor([cam.position for cam in cams], dtype=torch.float32)
        self.forward = rotation[:, 2]
        focal = torch.tensor(self.intrinsics[:, 0, 0], dtype=torch.float32)
        pixel = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2)[None] / focal[:, None]
        rows, cols = pixel[:, :, None].expand(-1, -1, size), pixel[:, None, :].expand(-1, size, -1)
        camera_dirs = torch.stack([cols, rows, torch.ones_like(rows)], dim=-1).reshape(count, -1, 3)
        self.dirs = torch.nn.functional.normalize(camera_dirs @ rotation, dim=-1)  # (B, HW, 3)
        self.slots = max(1, max(len(scene.objects) for scene, _ in items))

    def objects(self) -> list[tuple[int, int, str, Tensor, Tensor, float]]:
        """(image, slot, shape, position (3,), yaw, scale) of every object of the batch."""
        out = []
        for b, (scene, _) in enumerate(self.items):
            for k, obj in enumerate(scene.objects):
                out.append((b, k, obj.shape, torch.tensor([obj.x, 0.0, obj.z]), obj.yaw, obj.scale))
        return out


def _cast(batch: _Batch, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Object hits of every ray. origins (B, R, 3) or (B, 1, 3); dirs (B, R, 3) or (B, 1, 3),
    unit length. Returns t (B, slots, R), inf where missed, and world normals (B, slots, R, 3).

    Each object is first tested against its bounding sphere; only the rays that pass it (a small
    fraction: objects cover little of the image) go through the exact intersection."""
    count = len(batch.items)
    rays = max(origins.shape[1], dirs.shape[1])
    origins, dirs = origins.expand(count, rays, 3), dirs.expand(count, rays, 3)
    t_all = torch.full((count, batch.slots, rays), math.inf)
    n_all = torch.zeros(count, batch.slots, rays, 3)
    by_shape: dict[str, list[tuple[int, int, Tensor, float, float]]] = {}
    for b, k, shape, position, yaw, scale in batch.objects():
        by_shape.setdefault(shape, []).append((b, k, position, yaw, scale))
    for shape, members in by_shape.items():
        images = torch.tensor([m[0] for m in members])
        slots = torch.tensor([m[1] for m in members])
        position = torch.stack([m[2] for m in members])  # (n, 3)
        rotation = _yaw_matrix(torch.tensor([m[3] for m in members], dtype=torch.float32))
        scale = torch.tensor([m[4] for m in members], dtype=torch.float32)
        height, radius = geometry.BOUNDS[shape]
        centre = position + torch.stack([0 * scale, height * scale, 0 * scale], -1)
        to_centre = centre[:, None] - origins[images]  # (n, R, 3)
        along = (to_centre * dirs[images]).sum(-1)
        miss = (to_centre * to_centre).sum(-1) - along**2
        near = (miss <= (radius * scale[:, None]) ** 2) & (along > -radius * scale[:, None])
        member, ray = near.nonzero(as_tuple=True)
        if member.numel() == 0:
            continue
        image = images[member]
        rot = rotation[member]  # (K, 3, 3)
        # world -> local: x_local = R^T (x - p) / s, i.e. (x - p) @ R / s for row vectors.
        local_origin = ((origins[image, ray] - position[member])[:, None] @ rot)[:, 0]
        local_dir = (dirs[image, ray][:, None] @ rot)[:, 0]
        inv_scale = (1.0 / scale[member])[:, None]
        t, normal = geometry.intersect(shape, local_origin * inv_scale, local_dir * inv_scale)
        t_all[image, slots[member], ray] = t
        n_all[image, slots[member], ray] = (normal[:, None] @ rot.transpose(1, 2))[:, 0]
    return t_all, n_all


def _keypoints(batch: _Batch, depth: Tensor, instance: Tensor) -> list[np.ndarray]:
    """Per image (p, 5): instance, keypoint id, x, y (pixels), visible. A keypoint is visible
    when its object is (it has a box) and a pixel next to its projection shows that object at
    the keypoint's depth (so nothing occludes it)."""
    size = batch.size
    pixels = (instance.flatten(1)[:, :, None] == torch.arange(1, batch.slots + 1)).sum(1)
    shown = pixels >= MIN_BOX_PIXELS  # (B, slots)
    out = []
    for b, (scene, _) in enumerate(batch.items):
        rows = []
        pose, intrinsics = batch.poses[b], batch.intrinsics[b]
        for i, obj in enumerate(scene.objects):
            c, s = math.cos(obj.yaw), math.sin(obj.yaw)
            rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
            for name, local in geometry.KEYPOINTS[obj.shape].items():
                world = rotation @ (np.asarray(local) * obj.scale) + np.array([obj.x, 0.0, obj.z])
                camera = pose[:3, :3] @ world + pose[:3, 3]
                x = intrinsics[0, 0] * camera[0] / camera[2] + intrinsics[0, 2]
                y = intrinsics[1, 1] * camera[1] / camera[2] + intrinsics[1, 2]
                visible = 0.0
                if camera[2] > 0 and 0 <= x < size and 0 <= y < size and shown[b, i]:
                    r, q = int(y), int(x)
                    window = (slice(max(r - 1, 0), r + 2), slice(max(q - 1, 0), q + 2))
                    gap = (depth[b][window] - float(camera[2])).abs()
                    own = instance[b][window] == i + 1
                    visible = float(bool((own & (gap < 0.03 * camera[2])).any()))
                kp_id = KEYPOINT_IDS.index((obj.shape, name))
                rows.append([i + 1, kp_id, x, y, visible])
        out.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
    return out


def render_views(
    items: list[tuple[Scene, int]], size: int, shadows: bool = True
) -> list[RenderedView]:
    """Render each (scene, view) at size x size with its ground truth."""
    batch = _Batch(items, size)
    count, rays = len(items), size * size
    eye = batch.eye[:, None]  # (B, 1, 3)
    dirs = batch.dirs
    t_obj, n_obj = _cast(batch, eye, dirs)
    t_near, slot = t_obj.min(dim=1)  # (B, HW)
    dy = dirs[..., 1]
    t_floor = torch.where(
        dy < -1e-6, -eye[..., 1] / dy.clamp(max=-1e-6), torch.full_like(dy, math.inf)
    )
    hit_object = t_near < t_floor
    t_hit = torch.minimum(t_near, t_floor)
    sky = ~torch.isfinite(t_hit)
    points = eye + torch.where(sky, 0.0, t_hit)[..., None] * dirs
    up = torch.tensor([0.0, 1.0, 0.0]).expand(count, rays, 3)
    normal_obj = torch.gather(n_obj, 1, slot[:, None, :, None].expand(-1, 1, -1, 3))[:, 0]
    normals = torch.where(hit_object[..., None], normal_obj, up)

    light = torch.tensor([scene.light_direction for scene, _ in items], dtype=torch.float32)[
        :, None
    ]
    lit = (normals * light).sum(-1).clamp(min=0.0)
    if shadows:
        t_shadow, _ = _cast(batch, points + 1e-3 * normals, light)
        shadow = torch.isfinite(t_shadow).any(dim=1) & ~sky
        lit = torch.where(shadow, 0.0, lit)

    base = torch.zeros(count, rays, 3)
    shiny = torch.zeros(count, rays, dtype=torch.bool)
    sky_rgb = torch.zeros(count, rays, 3)
    for b, (scene, _) in enumerate(items):
        colours = torch.tensor([COLORS[o.color] for o in scene.objects] or [(0.0, 0.0, 0.0)])
        materials = torch.tensor([o.material == "shiny" for o in scene.objects] or [False])
        obj_slot = slot[b].clamp(max=len(colours) - 1)
        floor = _floor_colour(scene, points[b, :, 0], points[b, :, 2])
        base[b] = torch.where(hit_object[b, :, None], colours[obj_slot], floor)
        shiny[b] = hit_object[b] & materials[obj_slot]
        horizon, zenith = (torch.tensor(c) for c in scene.sky)
        height = dirs[b, :, 1].clamp(min=0.0)[:, None] ** 0.6
        sky_rgb[b] = horizon * (1 - height) + zenith * height
    intensity = torch.tensor([s.light_intensity for s, _ in items])[:, None]
    ambient = torch.tensor([s.ambient for s, _ in items])[:, None]
    colour = base * (ambient + intensity * lit)[..., None]
    halfway = torch.nn.functional.normalize(light - dirs, dim=-1)
    specular = (normals * halfway).sum(-1).clamp(min=0.0) ** 40 * (lit > 0)
    colour = colour + torch.where(shiny, 0.6 * specular, 0.0)[..., None]
    colour = torch.where(sky[..., None], sky_rgb, colour)
    rgb = (colour.clamp(0.0, 1.0) * 255 + 0.5).to(torch.uint8).reshape(count, size, size, 3)

    depth = torch.where(sky, math.inf, t_hit * (dirs * batch.forward[:, None]).sum(-1))
    depth = depth.reshape(count, size, size)
    instance = torch.where(hit_object, slot + 1, 0).reshape(count, size, size)
    shape_class = torch.zeros(count, batch.slots, dtype=torch.long)
    for b, (scene, _) in enumerate(items):
        for k, obj in enumerate(scene.objects):
            shape_class[b, k] = 2 + geometry.SHAPE_NAMES.index(obj.shape)
    semantic = torch.where(hit_object, torch.gather(shape_class, 1, slot), 1)
    semantic = torch.where(sky, 0, semantic).reshape(count, size, size)
    keypoints = _keypoints(batch, depth, instance)
    boxes, pixels, nearest = _boxes(instance, depth, batch.slots)
    return [
        _finish(
            batch,
            b,
            rgb[b],
            depth[b],
            instance[b],
            semantic[b],
            keypoints[b],
            (boxes[b], pixels[b], nearest[b]),
        )
        for b in range(count)
    ]


def _boxes(
    instance: Tensor, depth: Tensor, slots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every (image, slot): the tight xyxy box of its visible pixels (normalised), its pixel
    count and its nearest camera depth, all at once."""
    size = instance.shape[-1]
    ids = torch.arange(1, slots + 1)[None, :, None, None]
    masks = instance[:, None] == ids  # (B, slots, H, W)
    pixels = masks.flatten(2).sum(-1)
    index = torch.arange(size)
    rows, cols = masks.any(dim=3), masks.any(dim=2)  # (B, slots, H) and (B, slots, W)
    big = size + 1

    def first(hit: Tensor) -> Tensor:
        return torch.where(hit, index, big).amin(-1)

    def last(hit: Tensor) -> Tensor:
        return torch.where(hit, index, -1).amax(-1)

    boxes = torch.stack([first(cols), first(rows), last(cols) + 1, last(rows) + 1], -1) / size
    nearest = torch.where(masks, depth[:, None], math.inf).flatten(2).amin(-1)
    return boxes.numpy(), pixels.numpy(), nearest.numpy()


def _finish(
    batch: _Batch,
    b: int,
    rgb: Tensor,
    depth: Tensor,
    instance: Tensor,
    semantic: Tensor,
    keypoints: np.ndarray,
    regions: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> RenderedView:
    scene, view = batch.items[b]
    all_boxes, pixels, nearest = regions
    boxes, box_instances, names, visible = [], [], [], []
    for i, obj in enumerate(scene.objects):
        if pixels[i] < MIN_BOX_PIXELS:
            continue
        box = all_boxes[i]
        boxes.append(box)
        box_instances.append(i + 1)
        names.append(obj.name)
        centre_x, centre_y = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
        visible.append(Visible(obj, centre_x, centre_y, float(nearest[i])))
    rng = np.random.default_rng([scene.seed, scene.index, view, 1])
    text = caption(visible, scene.floor, scene.floor_colors[0], rng)
    return RenderedView(
        key=sample_key(scene.index, view),
        rgb=rgb.numpy(),
        depth=depth.numpy().astype(np.float32),
        instance=instance.to(torch.uint8).numpy(),
        semantic=semantic.to(torch.uint8).numpy(),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        box_instances=np.asarray(box_instances, dtype=np.int32),
        names=names,
        keypoints=keypoints,
        intrinsics=batch.intrinsics[b].astype(np.float32),
        world_to_camera=batch.poses[b].astype(np.float32),
        caption=text,
        scene_index=scene.index,
        view=view,
    )
