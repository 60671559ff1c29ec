"""The handout of a deck: one self-contained HTML file (images embedded as data: URIs, opens offline) and a PDF.

Per case: an overview of the slide with the top regions outlined and numbered, close-ups of the top regions, the
plain-words reading (``core.review.decks``) and the talking point. The PDF is drawn with Pillow (no browser needed).
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from core.errors import SlideLensError
from core.review.decks import GLOSSARY, TOUR_REGIONS, CaseView, deck_cases, region_line
from core.viewer.regions import Region

if TYPE_CHECKING:
    from core.cohort.cohort_file import Cohort
    from core.review.store import Store
    from core.review.store_decks import Deck
    from core.slides.slide import Slide

OUTLINE = (255, 214, 10)  # a soft yellow, visible on pink and purple tissue
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
PAGE = (1754, 1240)  # A4 landscape at 150 dpi


@dataclass(frozen=True)
class CaseImages:
    """The pictures of one case (None when the slide cannot be read)."""

    overview: Image.Image | None
    closeups: tuple[Image.Image, ...] = ()


def overview_image(slide: Slide, regions: tuple[Region, ...] | list[Region], max_size: int = 900) -> Image.Image:
    """The slide's thumbnail with each region's border drawn and its number written beside it."""
    img = slide.thumbnail(max_size).convert("RGB")
    w0, _ = slide.dimensions
    scale = img.width / max(1, w0)
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    width = max(2, img.width // 300)
    for r in regions:
        for x0, y0, x1, y1 in r.outline():
            draw.line([(x0 * scale, y0 * scale), (x1 * scale, y1 * scale)], fill=OUTLINE + (235,), width=width)
        tx, ty = r.x * scale, max(0, r.y * scale - 22)
        draw.rounded_rectangle([tx, ty, tx + 20, ty + 20], radius=4, fill=(20, 20, 20, 200))
        draw.text((tx + 5, ty + 2), str(r.rank), fill=OUTLINE + (255,), font=_font(15, bold=True))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def closeup_image(slide: Slide, region: Region, size: int = 420) -> Image.Image:
    """The region with a margin of half its size around it, from the best pyramid level, fit into ``size``."""
    w0, h0 = slide.dimensions
    b = region.box(pad=0.5)
    side = max(b["w"], b["h"])
    cx, cy = b["x"] + b["w"] / 2, b["y"] + b["h"] / 2
    x = int(max(0, min(cx - side / 2, w0 - side)))
    y = int(max(0, min(cy - side / 2, h0 - side)))
    side = int(min(side, w0, h0)) or 1
    ds = max(1.0, side / size)
    level = slide.best_level_for_downsample(ds)
    lds = slide.level_downsamples[level]
    n = max(1, round(side / lds))
    img = slide.read_region((x, y), level, (n, n))
    img = img.resize((size, size), Image.Resampling.LANCZOS) if img.size != (size, size) else img.copy()
    scale = size / side
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in region.outline():
        draw.line([((x0 - x) * scale, (y0 - y) * scale), ((x1 - x) * scale, (y1 - y) * scale)], fill=OUTLINE,
                  width=max(2, size // 160))
    return img


def case_images(cohort: Cohort, case: CaseView) -> CaseImages:
    """Overview and close-ups of one case (``CaseImages(None)`` when its slide cannot be opened)."""
    from core.viewer.tiles import open_cohort_slide

    if case.image_id not in cohort.slide_paths:
        return CaseImages(None)
    try:
        slide = open_cohort_slide(cohort, case.image_id)
        return CaseImages(overview_image(slide, case.regions),
                          tuple(closeup_image(slide, r) for r in case.regions[:TOUR_REGIONS]))
    except (SlideLensError, OSError):
        return CaseImages(None)


def data_uri(img: Image.Image, quality: int = 85) -> str:
    """A JPEG data: URI of ``img``."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f6f4;color:#1d1d1f}
header{padding:28px 40px 8px}h1{font-size:30px;margin:0 0 6px}header p{color:#555;margin:0}
section.case{background:#fff;margin:24px 40px;padding:24px 28px;border-radius:12px;box-shadow:0 1px 4px #0002;
page-break-after:always}section.case h2{font-size:24px;margin:0 0 12px}
.reading p{font-size:20px;line-height:1.45;margin:4px 0}.warn{color:#9a3412;font-weight:600}
.pics{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start;margin-top:14px}
.pics figure{margin:0}.pics img{display:block;border-radius:8px;border:1px solid #ddd}
.overview img{max-width:640px;max-height:520px}.closeups img{width:220px;height:220px}
figcaption{font-size:14px;color:#555;margin-top:4px}.talk{font-size:19px;border-left:4px solid #ffd60a;
padding:6px 14px;margin-top:16px;white-space:pre-wrap}.none{font-size:18px;color:#555;font-style:italic}
footer{font-size:14px;color:#555;padding:0 40px 30px}
"""


def deck_html(title: str, cases: list[CaseView], images: list[CaseImages]) -> str:
    """The handout as one HTML document; every piece of text is escaped, every image is a data: URI."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body><header><h1>{e(title)}</h1>"
             f"<p>{len(cases)} case(s) · SlideLens · {datetime.now(UTC).strftime('%d %B %Y')}</p></header>"]
    for i, (case, pics) in enumerate(zip(cases, images, strict=True), start=1):
        parts.append(f"<section class='case' data-case='{e(case.image_id)}'><h2>Case {i} of {len(cases)}: "
                     f"{e(case.image_id)}</h2><div class='reading'>")
        for line in case.lines:
            cls = " class='warn'" if ("unsure" in line or "disagrees" in line) else ""
            parts.append(f"<p{cls}>{e(line)}</p>")
        parts.append("</div>")
        if pics.overview is None:
            parts.append("<p class='none'>This slide cannot be shown.</p>")
        else:
            cap = "The whole slide; outlined: where the model looked most." if case.regions else "The whole slide."
            parts.append("<div class='pics'><figure class='overview'>"
                         f"<img alt='overview of {e(case.image_id)}' src='{data_uri(pics.overview)}'>"
                         f"<figcaption>{cap}</figcaption></figure>")
            if pics.closeups:
                parts.append("<div class='closeups'><p>It looked most at these regions:</p><div class='pics'>")
                for r, img in zip(case.regions, pics.closeups, strict=False):
                    parts.append(f"<figure><img alt='region {r.rank}' src='{data_uri(img)}'>"
                                 f"<figcaption>{e(region_line(r))}</figcaption></figure>")
                parts.append("</div></div>")
            parts.append("</div>")
        if case.regions_note:
            parts.append(f"<p class='none'>{e(case.regions_note)}</p>")
        if case.talking_point:
            parts.append(f"<div class='talk'>{e(case.talking_point)}</div>")
        parts.append("</section>")
    parts.append(f"<footer>{e(GLOSSARY)}</footer></body></html>")
    return "".join(parts)


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default(size)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, width: int,
          fill: tuple[int, int, int] = (29, 29, 31), bold: bool = False) -> int:
    """Draw wrapped text; returns the y below it."""
    x, y = xy
    font = _font(size, bold)
    chars = max(10, int(width / (size * 0.55)))
    for para in str(text).splitlines() or [""]:
        for line in textwrap.wrap(para, chars) or [""]:
            draw.text((x, y), line, fill=fill, font=font)
            y += int(size * 1.35)
    return y


def case_page(title: str, n: int, total: int, case: CaseView, pics: CaseImages) -> Image.Image:
    """One PDF page (A4 landscape) for a case."""
    page = Image.new("RGB", PAGE, "white")
    d = ImageDraw.Draw(page)
    d.text((70, 50), title, fill=(90, 90, 90), font=_font(24))
    y = _text(d, (70, 90), f"Case {n} of {total}: {case.image_id}", 38, 1600, bold=True) + 10
    for line in case.lines:
        warn = "unsure" in line or "disagrees" in line
        y = _text(d, (70, y), line, 28, 1600, fill=(154, 52, 18) if warn else (29, 29, 31), bold=warn)
    y += 16
    if pics.overview is not None:
        ov = pics.overview.copy()
        ov.thumbnail((900, 1150 - y - 140))
        page.paste(ov, (70, y))
        x = 70 + ov.width + 40
        if pics.closeups:
            cy = _text(d, (x, y), "It looked most at these regions:", 24, 600)
            for r, img in zip(case.regions, pics.closeups, strict=False):
                side = min(260, (1150 - cy - 140) // max(1, len(pics.closeups)) - 40)
                if side < 80:
                    break
                page.paste(img.resize((side, side)), (x, cy + 4))
                _text(d, (x + side + 16, cy + 4), region_line(r), 22, 400)
                cy += side + 24
        y += ov.height + 16
    note = case.regions_note or ("" if pics.overview is not None else "This slide cannot be shown.")
    if note:
        y = _text(d, (70, y), note, 24, 1600, fill=(90, 90, 90))
    if case.talking_point:
        d.rectangle([70, y + 10, 76, y + 50], fill=OUTLINE)
        _text(d, (92, y + 12), case.talking_point, 26, 1560)
    _text(d, (70, PAGE[1] - 60), GLOSSARY, 18, 1600, fill=(110, 110, 110))
    return page


def deck_pdf(title: str, cases: list[CaseView], images: list[CaseImages]) -> bytes:
    """The handout as a PDF, one page per case (a title page when the deck is empty)."""
    pages = [case_page(title, i, len(cases), c, p) for i, (c, p) in enumerate(zip(cases, images, strict=True), 1)]
    if not pages:
        blank = Image.new("RGB", PAGE, "white")
        _text(ImageDraw.Draw(blank), (70, 90), f"{title}: no cases yet", 38, 1600, bold=True)
        pages = [blank]
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", resolution=150.0, save_all=True, append_images=pages[1:], title=title)
    return buf.getvalue()


def export_deck(cohort: Cohort, store: Store, deck: Deck) -> tuple[str, bytes]:
    """(HTML, PDF) handouts of ``deck``."""
    cases = deck_cases(cohort, store, deck)
    images = [case_images(cohort, c) for c in cases]
    return deck_html(deck.name, cases, images), deck_pdf(deck.name, cases, images)
