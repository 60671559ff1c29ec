"""Region annotations as GeoJSON: QuPath-shaped import and export, validity, class colours.

Geometry is in level-0 pixel coordinates (x right, y down), as QuPath writes it. A file is a ``FeatureCollection``
or a bare array of ``Feature`` objects; each feature's class is ``properties.classification.name`` and detections
(``objectType`` other than ``annotation``) are skipped with a count. Polygon, MultiPolygon, LineString and Point are
accepted. ``parse_features`` checks everything before anything is stored, so a bad file imports nothing.
Geometry checks (validity, repair, area, point-in-polygon) use shapely.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping, shape

from core.errors import InputError
from core.review.store_annotations import Annotation

MAX_GEOJSON_BYTES = 20 * 1024 * 1024
GEOMETRY_TYPES = ("Polygon", "MultiPolygon", "LineString", "Point")
TUMOUR_NAMES = ("tumour", "tumor")
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {  # fixed per class; QuPath's defaults where it has one
    "Tumour": (200, 0, 0), "Tumor": (200, 0, 0), "Stroma": (150, 200, 150), "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0), "Immune cells": (160, 90, 160), "Region*": (0, 0, 180),
}
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
            (23, 190, 207), (188, 189, 34))


def class_colour(cls: str) -> tuple[int, int, int]:
    """The fixed colour of a class (a stable palette colour for classes without one)."""
    if cls in CLASS_COLOURS:
        return CLASS_COLOURS[cls]
    return _PALETTE[int(hashlib.sha1(cls.encode()).hexdigest(), 16) % len(_PALETTE)]


def colour_hex(cls: str) -> str:
    r, g, b = class_colour(cls)
    return f"#{r:02x}{g:02x}{b:02x}"


def is_tumour(cls: str) -> bool:
    """Whether a class name means tumour (Tumour, Tumor, tumour, ...)."""
    return cls.strip().lower() in TUMOUR_NAMES


@dataclass(frozen=True)
class ParsedFeature:
    """One annotation read from a file, checked and ready to store."""

    image_id: str | None
    geometry: dict[str, Any]
    cls: str
    note: str


@dataclass
class ParseReport:
    """What ``parse_features`` found: the annotations, detections skipped, repairs made, new class names."""

    features: list[ParsedFeature] = field(default_factory=list)
    skipped_detections: int = 0
    warnings: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{len(self.features)} annotation(s)"
        if self.skipped_detections:
            s += f", {self.skipped_detections} detection(s) skipped"
        if self.warnings:
            s += f", {len(self.warnings)} repaired"
        return s


def read_geojson_file(path: str | Path) -> Any:
    """The parsed JSON of a GeoJSON file; one clear ``InputError`` when it is missing, too big or not JSON."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise InputError(f"{p}: file not found") from None
    if size > MAX_GEOJSON_BYTES:
        raise InputError(f"{p}: {size / 1e6:.0f} MB is more than the {MAX_GEOJSON_BYTES // (1024 * 1024)} MB an "
                         "annotation file may have; nothing imported (export fewer objects, e.g. no detections)")
    return loads_geojson(p.read_bytes(), str(p))


def loads_geojson(data: bytes | str, source: str = "GeoJSON") -> Any:
    """Parse GeoJSON text; one clear line when it is too big or not JSON."""
    if len(data) > MAX_GEOJSON_BYTES:
        raise InputError(f"{source}: more than {MAX_GEOJSON_BYTES // (1024 * 1024)} MB; nothing imported")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: not JSON ({exc}); nothing imported") from None


def _features(doc: Any, source: str) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
        return doc["features"]
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    raise InputError(f"{source}: not a GeoJSON FeatureCollection or array of Features; nothing imported")


def _class_of(props: dict[str, Any]) -> str | None:
    c = props.get("classification")
    if isinstance(c, dict):
        c = c.get("name")
    if c is None:
        c = props.get("class") or props.get("classification_name")
    c = " ".join(str(c).split()) if c is not None else ""
    return c or None


def check_geometry(geom: Any, where: str, dims: tuple[int, int] | None = None,
                   repair: bool = True) -> tuple[dict[str, Any], str | None]:
    """A checked GeoJSON geometry and a warning (or None): invalid polygons are repaired (``repair``) or refused;
    coordinates outside ``dims`` (level-0 width, height) are refused."""
    if geom is None:
        raise InputError(f"{where}: no geometry")
    if not isinstance(geom, dict) or geom.get("type") not in GEOMETRY_TYPES:
        kind = geom.get("type") if isinstance(geom, dict) else type(geom).__name__
        raise InputError(f"{where}: geometry type {kind!r} is not supported (use {', '.join(GEOMETRY_TYPES)})")
    try:
        shp = shape(geom)
    except Exception as exc:  # noqa: BLE001 - shapely raises many kinds for malformed coordinates
        raise InputError(f"{where}: malformed {geom['type']} coordinates ({exc})") from None
    if shp.is_empty:
        raise InputError(f"{where}: empty {geom['type']}")
    coords = shapely.get_coordinates(shp)
    if not np.isfinite(coords).all():
        raise InputError(f"{where}: coordinates are not finite numbers")
    if dims is not None:
        x0, y0, x1, y1 = shp.bounds
        w, h = dims
        if x0 < -1 or y0 < -1 or x1 > w + 1 or y1 > h + 1:
            raise InputError(f"{where}: coordinates ({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f}) fall outside the "
                             f"slide (0, 0)-({w}, {h}); are they level-0 pixels of this slide?")
    warning = None
    if not shp.is_valid:
        why = shapely.is_valid_reason(shp)
        if not repair:
            raise InputError(f"{where}: invalid {geom['type']} ({why}); not imported")
        fixed = shapely.make_valid(shp)
        polys = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in ("Polygon", "MultiPolygon")]
        fixed = shapely.unary_union(polys) if polys else fixed
        if fixed.is_empty or fixed.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputError(f"{where}: invalid {geom['type']} ({why}) that cannot be repaired; not imported")
        geom = _plain(mapping(fixed))
        warning = f"{where}: invalid {shp.geom_type} ({why}) repaired into a valid {fixed.geom_type}"
    return geom, warning


def _plain(g: Any) -> Any:
    """GeoJSON with lists (shapely's ``mapping`` gives tuples)."""
    if isinstance(g, dict):
        return {k: _plain(v) for k, v in g.items()}
    if isinstance(g, (list, tuple)):
        return [_plain(v) for v in g]
    return g


def parse_features(doc: Any, source: str, known_classes: Sequence[str], *, image_id: str | None = None,
                   dims: tuple[int, int] | None = None, add_classes: bool = False,
                   repair: bool = True) -> ParseReport:
    """Check every feature of a parsed GeoJSON document; raise ``InputError`` (naming the feature) on the first
    bad one so that nothing is imported half. ``image_id`` is the slide when the file has none per feature
    (``properties.image_id``). Unknown classes are refused unless ``add_classes`` (then listed in new_classes)."""
    rep = ParseReport()
    known = {c.lower(): c for c in known_classes}
    for n, feat in enumerate(_features(doc, source)):
        where = f"{source}: feature {n}"
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise InputError(f"{where}: not a GeoJSON Feature; nothing imported")
        props = feat.get("properties") or {}
        if not isinstance(props, dict):
            raise InputError(f"{where}: 'properties' is not an object; nothing imported")
        kind = str(props.get("objectType", "annotation")).lower()
        if kind not in ("annotation", "tile"):
            rep.skipped_detections += 1
            continue
        cls = _class_of(props)
        if cls is None:
            raise InputError(f"{where}: no class (properties.classification.name); nothing imported")
        if cls.lower() in known:
            cls = known[cls.lower()]
        elif add_classes:
            if cls not in rep.new_classes:
                rep.new_classes.append(cls)
        else:
            raise InputError(f"{where}: unknown class {cls!r} (known: {', '.join(known_classes)}); add it to the "
                             "cohort's annotation classes (--add-classes) or rename it; nothing imported")
        geom, warning = check_geometry(feat.get("geometry"), where, dims, repair)
        if warning:
            rep.warnings.append(warning)
        slide = props.get("image_id") or image_id
        note = props.get("note", props.get("name", "")) or ""
        rep.features.append(ParsedFeature(None if slide is None else str(slide), geom, cls, str(note)))
    return rep


def to_feature(a: Annotation) -> dict[str, Any]:
    """One annotation as a QuPath-shaped GeoJSON Feature (re-importing it gives the same annotation)."""
    props: dict[str, Any] = {"objectType": "annotation",
                             "classification": {"name": a.cls, "color": list(class_colour(a.cls))},
                             "image_id": a.image_id, "note": a.note, "author": a.author,
                             "created_at": a.created_at, "updated_at": a.updated_at, "slidelens_id": a.id}
    return {"type": "Feature", "id": f"slidelens-{a.id}", "geometry": a.geometry, "properties": props}


def feature_collection(annotations: Iterable[Annotation]) -> dict[str, Any]:
    """Annotations as a GeoJSON FeatureCollection (level-0 pixels), in the form QuPath imports."""
    return {"type": "FeatureCollection", "features": [to_feature(a) for a in annotations]}


def union_of(geometries: Iterable[dict[str, Any]]) -> Any:
    """The shapely union of the area-bearing geometries (polygons) among GeoJSON geometries (None if none)."""
    polys = [shape(g) for g in geometries if g.get("type") in ("Polygon", "MultiPolygon")]
    polys = [p if p.is_valid else shapely.make_valid(p) for p in polys]
    return shapely.unary_union(polys) if polys else None


def area_px(geometry: dict[str, Any]) -> float:
    """Area of a geometry in level-0 square pixels (0 for lines and points)."""
    return float(shape(geometry).area)


def mask_polygons(mask: np.ndarray, downsample: float, min_area_px: float = 0.0) -> list[dict[str, Any]]:
    """Outlines of a binary mask (True = inside) as GeoJSON Polygons in level-0 pixels (mask pixel (x, y) covers
    level-0 [ds*x, ds*x+ds) x [ds*y, ds*y+ds)), exact to the mask's pixel edges; used to import the demo's planted
    tumour masks."""
    m = np.asarray(mask, dtype=bool)
    boxes = []
    for y in range(m.shape[0]):  # one box per run of inside pixels of a row; their union is the outline
        row = np.diff(np.concatenate([[0], m[y].astype(np.int8), [0]]))
        for x0, x1 in zip(np.flatnonzero(row == 1), np.flatnonzero(row == -1), strict=True):
            boxes.append(shapely.box(x0 * downsample, y * downsample, x1 * downsample, (y + 1) * downsample))
    if not boxes:
        return []
    merged = shapely.simplify(shapely.unary_union(boxes), 0)  # drops the collinear corners of the runs
    return [_plain(mapping(g)) for g in getattr(merged, "geoms", [merged])
            if g.geom_type == "Polygon" and g.area > min_area_px]
