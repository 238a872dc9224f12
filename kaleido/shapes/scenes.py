"""The embedded synthetic data set ``shapes``: coloured shapes on a plain background.

Every scene is generated on the fly from a seeded ``numpy`` generator, so the data set
needs no files and no downloads, and item ``i`` is the same on every machine, worker
and epoch.

Geometry conventions (shared with :mod:`kaleido.shapes.parser`):

* coordinates are normalised to ``[0, 1]``: ``x`` to the right, ``y`` *down*; pixel
  ``(row, col)`` of an ``R x R`` image covers ``[col/R, (col+1)/R) x [row/R, (row+1)/R)``;
* ``radius`` is the half-extent of a shape: the radius of the circle around its centre
  that passes through its corners (the circumradius), so every shape lies inside the
  disc ``(cx, cy, radius)``;
* ``angle`` is in degrees, turning from +x towards +y (clockwise on screen).  At 0 a
  square is axis-aligned and a triangle points up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated colours, far apart from each other and from the neutral backgrounds, so
# that a pixel blended with the background still points towards a single colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 20, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (255, 230, 40),
    "purple": (150, 30, 210),
    "orange": (250, 130, 0),
}

# Circumradius as a fraction of the image side.  Gaps between the ranges keep the
# size word readable from an image; "small" is >= 4 px at 32 x 32.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.13, 0.16),
    "medium": (0.18, 0.21),
    "large": (0.23, 0.26),
}

# The 3 x 3 grid, row by row; an object is in the cell that holds its centre.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
}

# Rotations repeat with the symmetry of the shape, so sample only one period.
_ANGLE_PERIOD: dict[str, float] = {"circle": 0.0, "square": 90.0, "triangle": 120.0}
_SUPERSAMPLE = 4
_MAX_SCENE_ATTEMPTS = 1000


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene; see the module docstring for the conventions."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0

    @property
    def position(self) -> str:
        """Name of the 3 x 3 grid cell that holds the centre (one of ``POSITIONS``)."""
        col = min(max(int(self.cx * 3), 0), 2)
        row = min(max(int(self.cy * 3), 0), 2)
        return POSITIONS[3 * row + col]

    @property
    def vertices(self) -> np.ndarray:
        """Corners ``[K, 2]`` (x, y) of a polygon, in order of increasing angle; empty for a circle."""
        if self.shape == "circle":
            return np.zeros((0, 2))
        if self.shape == "square":
            angles = self.angle + 45.0 + 90.0 * np.arange(4)
        else:  # triangle: the first corner points up at angle 0
            angles = self.angle - 90.0 + 120.0 * np.arange(3)
        rad = np.deg2rad(angles)
        return np.stack([self.cx + self.radius * np.cos(rad), self.cy + self.radius * np.sin(rad)], axis=1)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Tight box ``(x1, y1, x2, y2)`` of the exact (unrasterised) shape, normalised."""
        if self.shape == "circle":
            r = self.radius
            return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)
        v = self.vertices
        x1, y1 = v.min(axis=0)
        x2, y2 = v.max(axis=0)
        return (float(x1), float(y1), float(x2), float(y2))

    @property
    def ellipse(self) -> tuple[float, float, float, float, float]:
        """``(cx, cy, a, b, theta)``: the ellipse with the shape's second moments.

        Semi-axes are ``2 * sqrt(eigenvalue of the covariance)``.  Circles and regular
        polygons have an isotropic covariance, so ``a == b`` and ``theta == 0``:
        variance ``r^2/4`` (circle), ``h^2/3`` with half-side ``h = r/sqrt 2`` (square),
        ``s^2/24`` with side ``s = r*sqrt 3`` (equilateral triangle).
        """
        variance = {"circle": 0.25, "square": 1.0 / 6.0, "triangle": 0.125}[self.shape] * self.radius**2
        semi = 2.0 * math.sqrt(variance)
        return (self.cx, self.cy, semi, semi, 0.0)

    @property
    def area(self) -> float:
        """Exact area, as a fraction of the image."""
        factor = {"circle": math.pi, "square": 2.0, "triangle": 3.0 * math.sqrt(3.0) / 4.0}[self.shape]
        return factor * self.radius**2

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean array: which points ``(x, y)`` (normalised) lie inside the shape."""
        dx, dy = x - self.cx, y - self.cy
        if self.shape == "circle":
            return dx * dx + dy * dy <= self.radius**2
        # A convex polygon with counter-clockwise corners (in x/y maths): inside is left of every edge.
        v = self.vertices
        inside = np.ones(np.broadcast(x, y).shape, dtype=bool)
        for k in range(len(v)):
            (x0, y0), (x1, y1) = v[k], v[(k + 1) % len(v)]
            inside &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0
        return inside


@dataclass(frozen=True)
class Scene:
    """Objects (the first is the "main" one named by the condition) on a background."""

    objects: tuple[ShapeObject, ...]
    background: str


@dataclass
class ShapesConfig:
    """How scenes are sampled and rendered.

    ``colors``/``shapes``/``backgrounds``/``sizes`` restrict the vocabulary (``None``:
    all of it).  ``margin`` is the smallest gap between the enclosing discs of two
    objects and ``border`` the smallest gap to the image edge (normalised), so that
    objects stay apart after rasterisation and the border shows the background.
    """

    resolution: int = 32
    min_objects: int = 1
    max_objects: int = 3
    colors: list[str] | None = None
    shapes: list[str] | None = None
    backgrounds: list[str] | None = None
    sizes: list[str] | None = None
    margin: float = 0.05
    border: float = 0.02
    max_attempts: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 16:
            raise ValueError(f"resolution must be an int >= 16, got {self.resolution!r}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got min_objects={self.min_objects}, "
                f"max_objects={self.max_objects}"
            )
        if self.max_objects > 4:
            raise ValueError(f"max_objects must be <= 4 (more do not fit without overlap), got {self.max_objects}")
        if not 0.0 <= self.margin <= 0.2 or not 0.0 <= self.border <= 0.1:
            raise ValueError(f"need 0 <= margin <= 0.2 and 0 <= border <= 0.1, got {self.margin}, {self.border}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name, vocabulary in (("colors", COLORS), ("shapes", SHAPES), ("backgrounds", BACKGROUNDS), ("sizes", SIZES)):
            _check_subset(name, getattr(self, name), tuple(vocabulary))

    @property
    def color_names(self) -> list[str]:
        return list(self.colors) if self.colors is not None else list(COLORS)

    @property
    def shape_names(self) -> list[str]:
        return list(self.shapes) if self.shapes is not None else list(SHAPES)

    @property
    def background_names(self) -> list[str]:
        return list(self.backgrounds) if self.backgrounds is not None else list(BACKGROUNDS)

    @property
    def size_names(self) -> list[str]:
        return list(self.sizes) if self.sizes is not None else list(SIZES)


def _check_subset(name: str, chosen: list[str] | None, accepted: tuple[str, ...]) -> None:
    if chosen is None:
        return
    if isinstance(chosen, str) or len(chosen) == 0:
        raise ValueError(f"{name} must be a non-empty list of names (accepted: {', '.join(accepted)}), got {chosen!r}")
    unknown = [c for c in chosen if c not in accepted]
    if unknown:
        raise ValueError(f"unknown {name} {unknown}; accepted names are: {', '.join(accepted)}")


def _pick(rng: np.random.Generator, names: list[str]) -> str:
    return names[int(rng.integers(len(names)))]


def _place(rng: np.random.Generator, shape: str, color: str, placed: list[ShapeObject], config: ShapesConfig) -> ShapeObject | None:
    """Rejection-sample size, radius, centre and angle so the object is clear of ``placed``."""
    for _ in range(config.max_attempts):
        size = _pick(rng, config.size_names)
        lo, hi = SIZES[size]
        radius = float(rng.uniform(lo, hi))
        edge = radius + config.border
        cx, cy = (float(v) for v in rng.uniform(edge, 1.0 - edge, size=2))
        angle = float(rng.uniform(0.0, _ANGLE_PERIOD[shape])) if _ANGLE_PERIOD[shape] else 0.0
        clear = all(math.hypot(cx - o.cx, cy - o.cy) >= radius + o.radius + config.margin for o in placed)
        if clear:
            return ShapeObject(shape, color, size, cx, cy, radius, angle)
    return None


def sample_scene(rng: np.random.Generator, config: ShapesConfig) -> Scene:
    """Sample a scene: background, object count, then objects one by one (main first).

    Objects never overlap (their enclosing discs are ``config.margin`` apart) and stay
    inside the image.  If an object cannot be placed, the whole scene is resampled; a
    configuration that (almost) never fits raises ``RuntimeError``.
    """
    for _ in range(_MAX_SCENE_ATTEMPTS):
        background = _pick(rng, config.background_names)
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        objects: list[ShapeObject] = []
        for _ in range(count):
            shape = _pick(rng, config.shape_names)
            color = _pick(rng, config.color_names)
            obj = _place(rng, shape, color, objects, config)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == count:
            return Scene(objects=tuple(objects), background=background)
    raise RuntimeError(
        f"could not place {config.min_objects}..{config.max_objects} non-overlapping objects of sizes "
        f"{config.size_names} in {_MAX_SCENE_ATTEMPTS} tries; allow fewer objects or smaller sizes"
    )


def _coverage(obj: ShapeObject, resolution: int) -> tuple[slice, slice, np.ndarray]:
    """Fraction of each pixel covered by ``obj``, on the pixel window around its box."""
    x1, y1, x2, y2 = obj.box
    c0, r0 = max(int(math.floor(x1 * resolution)), 0), max(int(math.floor(y1 * resolution)), 0)
    c1, r1 = min(int(math.ceil(x2 * resolution)), resolution), min(int(math.ceil(y2 * resolution)), resolution)
    n = resolution * _SUPERSAMPLE
    xs = (np.arange(c0 * _SUPERSAMPLE, c1 * _SUPERSAMPLE) + 0.5) / n
    ys = (np.arange(r0 * _SUPERSAMPLE, r1 * _SUPERSAMPLE) + 0.5) / n
    inside = obj.contains(xs[None, :], ys[:, None])
    alpha = inside.reshape(r1 - r0, _SUPERSAMPLE, c1 - c0, _SUPERSAMPLE).mean(axis=(1, 3))
    return slice(r0, r1), slice(c0, c1), alpha


def render(scene: Scene, resolution: int) -> np.ndarray:
    """Antialiased image ``uint8 [H, W, 3]`` (4x4 supersampling, box downsampling)."""
    image = np.empty((resolution, resolution, 3), dtype=np.float32)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        rows, cols, alpha = _coverage(obj, resolution)
        a = alpha[..., None].astype(np.float32)
        patch = image[rows, cols]
        image[rows, cols] = patch * (1.0 - a) + a * np.asarray(COLORS[obj.color], dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_masks(scene: Scene, resolution: int) -> np.ndarray:
    """One mask per object, ``bool [N, H, W]``: pixels covered at least 50%."""
    masks = np.zeros((len(scene.objects), resolution, resolution), dtype=bool)
    for i, obj in enumerate(scene.objects):
        rows, cols, alpha = _coverage(obj, resolution)
        masks[i, rows, cols] = alpha >= 0.5
    return masks


def condition_text(scene: Scene) -> str:
    """The coarse condition: only the main object's shape, e.g. ``"a circle"``."""
    return f"a {scene.objects[0].shape}"
