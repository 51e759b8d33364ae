"""Pictures: attention heatmaps and crop boxes (`asen explain`), the search results page
(`asen search --html`) and training curves (`asen train`). Matplotlib draws on its Agg
canvas through `Figure` directly (no pyplot, no global backend state)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps

from asen.atomic import atomic_write, atomic_write_text
from asen.data.images import BadImageError, load_image, open_image
from asen.model.asen import ASENPP
from asen.page_files import PageFiles

if TYPE_CHECKING:  # search imports faiss; training plots need neither
    from asen.search import Hit, SearchIndex

PANEL_W, PANEL_H, TITLE_H, DPI = 256, 288, 32, 100  # explain figure: pixels per panel
THUMB = 256  # longest side of result thumbnails on the page
HEAT_ALPHA = 0.45


@dataclass
class Explanation:
    """What the model looked at in one image, for some attributes."""

    image: np.ndarray  # uint8 [3, S, S], as the model saw it
    attributes: list[int]
    attention: np.ndarray  # float32 [A, S, S], global-branch attention upsampled, min-max to 0..1
    boxes: np.ndarray | None  # float32 [A, 4] local-branch crop (x1, y1, x2, y2); None at stage 1


def explain(model: ASENPP, source: Path, attributes: list[int]) -> Explanation:
    """Attention maps and crop boxes of `model` for an image file and some attributes."""
    size = model.source_size
    image = load_image(source, size)
    device = model.mean.device
    x = torch.from_numpy(image).to(device).unsqueeze(0).expand(len(attributes), -1, -1, -1)
    a = torch.tensor(attributes, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model.branches(x, a)
    model.train(was_training)
    att = F.interpolate(
        out.global_attention.float().unsqueeze(1), (size, size), mode="bilinear"
    ).squeeze(1)
    lo = att.amin(dim=(1, 2), keepdim=True)
    att = (att - lo) / (att.amax(dim=(1, 2), keepdim=True) - lo).clamp_min(1e-12)
    boxes = None if out.boxes is None else out.boxes.float().cpu().numpy()
    return Explanation(image, list(attributes), att.cpu().numpy(), boxes)


def overlay(image: np.ndarray, attention: np.ndarray, box: np.ndarray | None) -> Image.Image:
    """The image with the heatmap blended over it and the crop box drawn in white."""
    heat = colormaps["jet"](attention)[..., :3] * 255
    rgb = image.transpose(1, 2, 0).astype(np.float32)
    picture = Image.fromarray(((1 - HEAT_ALPHA) * rgb + HEAT_ALPHA * heat).astype(np.uint8))
    if box is not None:
        x1, y1, x2, y2 = box.tolist()
        width = max(2, image.shape[-1] // 80)
        ImageDraw.Draw(picture).rectangle((x1, y1, x2 - 1, y2 - 1), outline="white", width=width)
    return picture


def _atomic_savefig(fig: Figure, out: Path) -> None:
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=DPI))


def _save_picture(picture: Image.Image, out: Path, kind: str, **options: object) -> None:
    atomic_write(out, lambda fh: picture.save(fh, kind, **options))


def explain_figure(explanation: Explanation, names: list[str], out: Path) -> tuple[int, int]:
    """One row of panels: the input, then per attribute its heatmap and crop box.
    Every panel is PANEL_W x PANEL_H pixels; returns the PNG size (width, height)."""
    panels = 1 + len(explanation.attributes)
    width, height = PANEL_W * panels, PANEL_H
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    pictures = [Image.fromarray(explanation.image.transpose(1, 2, 0))]
    titles = ["input"]
    for i, a in enumerate(explanation.attributes):
        box = None if explanation.boxes is None else explanation.boxes[i]
        pictures.append(overlay(explanation.image, explanation.attention[i], box))
        titles.append(names[a])
    if explanation.boxes is None:
        titles[0] += " (stage 1: no crop)"
    pad = 8 / PANEL_W
    for p, (picture, title) in enumerate(zip(pictures, titles, strict=True)):
        ax = fig.add_axes(
            (p / panels + pad / panels, pad, (1 - 2 * pad) / panels, 1 - TITLE_H / PANEL_H - pad)
        )
        ax.imshow(picture)
        ax.set_axis_off()
        ax.set_title(title, fontsize=11)
    _atomic_savefig(fig, out)
    return width, height


def plot_training(metrics: Path) -> Path:
    """Loss and validation mAP curves from `metrics.jsonl`, as `curves.png` beside it."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    seen = np.cumsum([r["triplets"] for r in records])
    fig = Figure(figsize=(10, 4), dpi=DPI, facecolor="white", layout="constrained")
    loss_ax, map_ax = fig.subplots(1, 2)
    styles = {"loss": "-", "loss_global": "--", "loss_local": "--", "loss_align": ":"}
    for key, style in styles.items():
        if all(key in r for r in records):
            loss_ax.plot(seen, [r[key] for r in records], style, marker=".", label=key)
    loss_ax.set(title="training loss (epoch mean)", xlabel="triplets seen", yscale="log")
    map_ax.plot(seen, [r["val_map"] for r in records], "k-", marker="o", lw=2, label="overall")
    for name in records[-1].get("val_per_attribute", {}):
        values = [r.get("val_per_attribute", {}).get(name, np.nan) for r in records]
        map_ax.plot(seen, values, marker=".", lw=1, label=name)
    map_ax.set(title="validation mAP", xlabel="triplets seen", ylim=(0, 1))
    for ax in (loss_ax, map_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out = metrics.with_name("curves.png")
    _atomic_savefig(fig, out)
    return out


def _thumbnail(source: Path, out: Path) -> bool:
    """Save a JPEG thumbnail of an image file; False when it cannot be read (missing,
    not an image, over the decoding bound)."""
    try:
        with open_image(source) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((THUMB, THUMB))
    except (BadImageError, OSError, ValueError):
        return False
    _save_picture(img, out, "JPEG", quality=88)
    return True


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } .sub { color: #666; margin: 0 0 16px; }
.query { display: flex; gap: 16px; align-items: flex-start; margin-bottom: 24px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 8px; }
.query img { width: 256px; height: 256px; image-rendering: auto; display: block; }
figcaption { font-size: 13px; margin-top: 6px; max-width: 256px; }
.note { color: #a15c00; font-size: 13px; max-width: 360px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.grid img, .missing { width: 100%; aspect-ratio: 1; object-fit: contain; display: block; }
.missing { background: #eee; color: #888; font-size: 12px; display: flex;
  align-items: center; justify-content: center; text-align: center; }
.score { font-weight: 600; } .path { color: #777; font-size: 11px; overflow-wrap: anywhere; }
#image-check { color: #b00; }
"""

# writes how many images the page holds and how many failed to load (tests read it)
PAGE_SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((i) => !i.complete || i.naturalWidth === 0).length;
  const check = document.getElementById("image-check");
  check.dataset.images = images.length;
  check.dataset.broken = broken;
  check.textContent = broken ? `${broken} of ${images.length} images failed to load` : "";
});
"""


def write_search_page(
    out: Path,
    query_file: Path,
    attribute: int,
    *,
    hits: list[Hit],
    index: SearchIndex,
    explanation: Explanation | None,
    subtitle: str,
    note: str = "",
) -> Path:
    """A self-contained results page; its images go to `OUT_files/` beside it, referenced
    relatively, so the page works when moved with that folder. That folder is asen's own
    (asen/page_files.py): any other folder there is refused, nothing asen did not write is
    deleted, and the page itself is written atomically. Returns the folder."""
    name = index.names[attribute]
    names = ["query.jpg", *(["attention.png"] if explanation is not None else [])]
    files = PageFiles(out, names + [f"r{hit.rank:03d}.jpg" for hit in hits])
    written: set[str] = set()
    esc = html.escape
    folder = esc(quote(files.folder.name))  # relative URL of the images folder
    query_figs = []
    if _thumbnail(query_file, files.path("query.jpg")):
        query_figs.append(("query.jpg", f"query: {query_file.name}"))
    if explanation is not None:
        box = None if explanation.boxes is None else explanation.boxes[0]
        _save_picture(
            overlay(explanation.image, explanation.attention[0], box),
            files.path("attention.png"),
            "PNG",
        )
        crop = "; white box: the local branch's crop" if box is not None else " (stage 1: no crop)"
        query_figs.append(("attention.png", f"attention for {name}{crop}"))
    written.update(f for f, _ in query_figs)
    query_html = "".join(
        f'<figure><img src="{folder}/{f}" alt="{esc(c)}"><figcaption>{esc(c)}</figcaption></figure>'
        for f, c in query_figs
    )
    cards = []
    for hit in hits:
        thumb = f"r{hit.rank:03d}.jpg"
        if _thumbnail(index.resolve(hit.path), files.path(thumb)):
            written.add(thumb)
            picture = f'<img src="{folder}/{thumb}" alt="{esc(hit.path)}">'
        else:
            picture = f'<div class="missing">image not available<br>{esc(hit.path)}</div>'
        cards.append(
            f'<figure>{picture}<figcaption>#{hit.rank} <span class="score">{hit.score:.4f}</span>'
            f'<div>{esc(name)} = {hit.value}</div><div class="path">{esc(hit.path)}</div>'
            "</figcaption></figure>"
        )
    files.finish(written)
    title = f"asen search: {name}"
    atomic_write_text(
        out,
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{PAGE_CSS}</style></head>
<body>
<h1>Items with the same <em>{esc(name)}</em></h1>
<p class="sub">{esc(subtitle)}</p>
<section class="query">{query_html}<p class="note">{esc(note)}</p></section>
<h2>Top {len(hits)} by cosine similarity</h2>
<section class="grid">{"".join(cards)}</section>
<p id="image-check"></p>
<script>{PAGE_SCRIPT}</script>
</body></html>
""",
    )
    return files.folder
