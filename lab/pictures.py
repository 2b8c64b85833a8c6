"""The project's pictures: confusion matrices, the grid's charts, a campaign's contact sheet, a run's round times.

Not the paper (the workshop): every PNG the scripts draw, with Pillow, written atomically.
"""

import io
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from lab.runs import write_bytes_atomic


def font_of_size(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def draw_confusion(confusion, class_names: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG: true class down, prediction across, percent in cells."""
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    rows = confusion / confusion.sum(dim=1, keepdim=True).clamp_min(1)
    n, cell, left, top = len(class_names), 78, 150, 150
    image = Image.new("RGB", (left + n * cell + 20, top + n * cell + 50), "white")
    draw = ImageDraw.Draw(image)
    font, small = font_of_size(14), font_of_size(12)
    draw.text((10, 10), title or "confusion matrix (% of each true class)", fill="black", font=font)
    draw.text((left, top - 20), "predicted class", fill="black", font=small)
    for i in range(n):
        for j in range(n):
            value = float(rows[i, j])
            shade = int(255 - 200 * value)
            color = (shade, shade, 255) if i == j else (255, shade, shade)
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=color, outline="gray")
            draw.text((box[0] + 14, box[1] + 30), f"{100 * value:.1f}", fill="black", font=font)
        draw.text((8, top + i * cell + 30), class_names[i][:18], fill="black", font=small)
        label = Image.new("RGBA", (120, 16), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), class_names[i][:18], fill="black", font=small)
        image.paste(label.rotate(90, expand=True), (left + i * cell + 30, top - 145), label.rotate(90, expand=True))
    draw.text((8, top + n * cell + 15), "rows: true class", fill="black", font=small)
    save_png(image, path)


MADE_BY = "HEp-2 active learning reference (lab/pictures.py)"  # a PNG text chunk: this project drew the file


def made_here(path) -> bool:
    """Whether a PNG was drawn by this project (its Software text chunk), so a rerun may replace it."""
    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get("Software") == MADE_BY
    except (OSError, ValueError):
        return False


def save_png(image: Image.Image, path: str | Path) -> None:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MADE_BY)
    image.save(buffer, format="PNG", pnginfo=info)
    write_bytes_atomic(buffer.getvalue(), path)


def draw_contact_sheet(cells: list, captions: list[str], title: str = "", tile: int = 180, columns: int = 5):
    """Cells (2-D float arrays in [0, 1]) in a numbered grid, large enough for an annotator to judge.

    Each cell is stretched to its own brightest pixel for display only, so dim
    (intermediate) cells are as readable as bright ones.
    """
    rows = max(1, (len(cells) + columns - 1) // columns)
    image = Image.new("RGB", (columns * tile, rows * (tile + 34) + 30), "white")
    draw = ImageDraw.Draw(image)
    font, small = font_of_size(16), font_of_size(11)
    draw.text((8, 6), title, fill="black", font=font)
    for position, (cell, caption) in enumerate(zip(cells, captions)):
        x, y = (position % columns) * tile, 30 + (position // columns) * (tile + 34)
        peak = float(cell.max()) or 1.0
        picture = Image.fromarray((255 * cell / peak).clip(0, 255).astype("uint8"), mode="L")
        image.paste(picture.resize((tile - 8, tile - 8), Image.BICUBIC).convert("RGB"), (x + 4, y + 4))
        draw.rectangle((x + 4, y + 4, x + 38, y + 24), fill="black")
        draw.text((x + 8, y + 6), f"{position + 1}", fill="yellow", font=font)
        draw.text((x + 6, y + tile - 2), caption[:34], fill="black", font=small)
    return image


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def draw_line_chart(path, title: str, panels: list, xlabel: str = "labeled fraction of the pool") -> None:
    """Side-by-side panels of lines with a +-1 std band, y in percent.

    panels: [(y label, {series name: [(x, mean, std), ...]}), ...], x and y as fractions.
    """
    width, height, margin = 440, 340, 55
    image = Image.new("RGB", (width * len(panels), height + 70), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    font, small = font_of_size(14), font_of_size(11)
    draw.text((10, 8), title, fill="black", font=font)
    for panel_index, (ylabel, series) in enumerate(panels):
        left, top = panel_index * width + margin, 40
        plot_w, plot_h = width - margin - 20, height - 60
        xs = sorted({x for points in series.values() for x, _, _ in points}) or [0.0, 1.0]
        low = min(50.0, min((100 * (m - s) for points in series.values() for _, m, s in points), default=50.0))
        low = max(0.0, 10 * int(low // 10))

        def to_pixel(x, y):
            return left + plot_w * x, top + plot_h * (1 - (100 * y - low) / (100 - low))

        draw.rectangle((left, top, left + plot_w, top + plot_h), outline="black")
        for tick in range(int(low), 101, 10):
            _, y = to_pixel(0, tick / 100)
            draw.line((left, y, left + plot_w, y), fill=(225, 225, 225))
            draw.text((left - 28, y - 6), f"{tick}", fill="black", font=small)
        for x in xs:
            px, _ = to_pixel(x, low / 100)
            draw.text((px - 10, top + plot_h + 4), f"{100 * x:g}%", fill="black", font=small)
        draw.text((left, top + plot_h + 20), xlabel, fill="black", font=small)
        draw.text((left + 4, top + 4), f"{ylabel} (%)", fill="black", font=font)
        for index, (name, points) in enumerate(series.items()):
            color = PALETTE[index % len(PALETTE)]
            points = sorted(points)
            upper = [to_pixel(x, m + s) for x, m, s in points]
            lower = [to_pixel(x, m - s) for x, m, s in reversed(points)]
            if len(points) > 1:
                draw.polygon(upper + lower, fill=(*color, 50))
                draw.line([to_pixel(x, m) for x, m, _ in points], fill=color, width=2)
            for x, m, _ in points:
                px, py = to_pixel(x, m)
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)
            legend_y = top + plot_h - 18 * (len(series) - index)
            draw.line((left + plot_w - 90, legend_y + 6, left + plot_w - 70, legend_y + 6), fill=color, width=3)
            draw.text((left + plot_w - 65, legend_y), name, fill="black", font=small)
    save_png(image, path)


def draw_bar_chart(path, title: str, groups: list[str], series: dict[str, list]) -> None:
    """Grouped bars in percent: one group per entry of groups, one bar per series (values as fractions)."""
    group_w, bar_w, left, top, plot_h = 60 + 22 * len(series), 22, 50, 40, 260
    image = Image.new("RGB", (left + group_w * len(groups) + 140, top + plot_h + 60), "white")
    draw = ImageDraw.Draw(image)
    font, small = font_of_size(14), font_of_size(11)
    draw.text((10, 8), title, fill="black", font=font)
    for tick in range(0, 101, 20):
        y = top + plot_h * (1 - tick / 100)
        draw.line((left, y, left + group_w * len(groups), y), fill=(225, 225, 225))
        draw.text((left - 28, y - 6), f"{tick}", fill="black", font=small)
    for g, group in enumerate(groups):
        x0 = left + g * group_w + 20
        for index, values in enumerate(series.values()):
            value = values[g]
            if value is None:
                continue
            x = x0 + index * bar_w
            draw.rectangle((x, top + plot_h * (1 - value), x + bar_w - 3, top + plot_h), fill=PALETTE[index % 6])
            draw.text((x, top + plot_h * (1 - value) - 12), f"{100 * value:.0f}", fill="black", font=small)
        draw.text((x0, top + plot_h + 6), group, fill="black", font=small)
    for index, name in enumerate(series):
        y = top + 18 * index
        x = left + group_w * len(groups) + 10
        draw.rectangle((x, y, x + 12, y + 12), fill=PALETTE[index % 6])
        draw.text((x + 18, y), name, fill="black", font=small)
    save_png(image, path)


def draw_round_times(rounds: list[dict], title: str, path: Path) -> None:
    """A run's seconds per round, and its fine-tuning seconds, against its labeled cells, as a PNG."""
    width, height, left, top = 640, 420, 70, 40
    plot_w, plot_h = width - left - 20, height - top - 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = font_of_size(14), font_of_size(11)
    draw.text((10, 8), f"seconds per round against labeled cells: {title}", fill="black", font=font)
    most_labeled = max(r["labeled"] for r in rounds)
    most_seconds = max(r["seconds"] for r in rounds) * 1.1

    def to_pixel(labeled, seconds):
        return left + plot_w * labeled / most_labeled, top + plot_h * (1 - seconds / most_seconds)

    draw.rectangle((left, top, left + plot_w, top + plot_h), outline="black")
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        _, y = to_pixel(0, fraction * most_seconds)
        draw.line((left, y, left + plot_w, y), fill=(225, 225, 225))
        draw.text((8, y - 6), f"{fraction * most_seconds:.0f} s", fill="black", font=small)
        x, _ = to_pixel(fraction * most_labeled, 0)
        draw.text((x - 12, top + plot_h + 4), f"{fraction * most_labeled:.0f}", fill="black", font=small)
    draw.text((left, top + plot_h + 22), "labeled cells after the round", fill="black", font=small)
    for index, (name, key) in enumerate((("round", "seconds"), ("fine-tuning", "train_seconds"))):
        color = [(31, 119, 180), (255, 127, 14)][index]
        points = [to_pixel(r["labeled"], r[key]) for r in rounds]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        draw.line((left + 10, top + 12 + 18 * index, left + 30, top + 12 + 18 * index), fill=color, width=3)
        draw.text((left + 36, top + 6 + 18 * index), name, fill="black", font=small)
    save_png(image, path)
