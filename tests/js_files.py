"""Files for the JavaScript client's tests (tests/test_js_client.py): real photos in assorted formats, sizes and modes,
and tiny exported models of every task."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

import vitlab


# --- real photos in assorted formats, sizes and modes -----------------------------------------------------------
def write_photos(d: Path) -> list[Path]:
    import skimage.data as sd

    d.mkdir(parents=True, exist_ok=True)
    astro, chelsea, coffee, rocket = (Image.fromarray(f()) for f in (sd.astronaut, sd.chelsea, sd.coffee, sd.rocket))
    camera, coins, moon = (Image.fromarray(f()) for f in (sd.camera, sd.coins, sd.moon))
    logo = Image.fromarray(sd.logo())  # RGBA
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, chelsea.width).astype(np.uint8), (chelsea.height, 1)))
    saves = [
        ("astronaut.jpg", astro, dict(quality=90)),  # 4:2:0
        ("chelsea_422.jpg", chelsea.crop((3, 5, 304, 232)), dict(quality=75, subsampling=1)),
        ("coffee_progressive.jpg", coffee, dict(quality=80, progressive=True)),
        ("rocket_444_restart.jpg", rocket, dict(quality=95, subsampling=0, restart_marker_blocks=7)),
        ("camera_grey.jpg", camera.resize((389, 301)), dict(quality=85)),
        ("astronaut_exif6.jpg", astro.crop((0, 0, 512, 400)), dict(quality=88, exif=exif)),
        ("tiny.jpg", coffee.resize((7, 5)), dict(quality=90)),
        ("chelsea.png", chelsea, {}),
        ("coins_grey.png", coins, {}),
        ("logo_rgba.png", logo, {}),
        ("chelsea_alpha.png", Image.merge("RGBA", (*chelsea.split(), alpha)), {}),
        ("coffee_palette.png", coffee.resize((301, 200)).quantize(64), {}),
        ("logo_palette_alpha.png", logo.quantize(32, method=Image.Quantize.FASTOCTREE), {}),
        ("moon_16bit.png", Image.fromarray(np.asarray(moon).astype(np.uint16) * 257), {}),
        ("camera_la.png", Image.merge("LA", (camera.resize((200, 160)), alpha.resize((200, 160)))), {}),
        ("horse_1bit.png", Image.fromarray(sd.horse()).convert("1"), {}),
    ]
    for name, im, kw in saves:
        im.save(d / name, **kw)
    for name in ("hubble_deep_field.jpg", "rocket.jpg"):  # camera JPEGs as shipped
        shutil.copy(Path(sd.__file__).parent / name, d / name)
    (d / "zz_not_an_image.jpg").write_text("not an image")
    return sorted(p for p in d.iterdir() if p.is_file())



def write_formats(d: Path) -> list[Path]:
    """GIF, WebP and BMP, which a page decodes with the browser's decoders (Node has none: error records)."""
    import skimage.data as sd

    d.mkdir(parents=True, exist_ok=True)
    astro, chelsea, coffee, camera = (Image.fromarray(f()) for f in (sd.astronaut, sd.chelsea, sd.coffee, sd.camera))
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, chelsea.width).astype(np.uint8), (chelsea.height, 1)))
    rgba = Image.merge("RGBA", (*chelsea.split(), alpha))
    exif = Image.Exif()
    exif[0x0112] = 6
    see_through = np.asarray(chelsea.quantize(255)).copy()
    see_through[:, :120] = 255  # palette index 255: transparent
    see_through = Image.fromarray(see_through, "P")
    see_through.putpalette(chelsea.quantize(255).getpalette()[:765] + [0, 0, 0])
    saves = [
        ("chelsea.gif", chelsea, {}), ("camera_grey.gif", camera.resize((301, 257)), {}),
        ("coffee_interlaced.gif", coffee.resize((300, 200)), dict(interlace=True)),
        ("chelsea_transparent.gif", see_through, dict(transparency=255)),
        ("astronaut_anim.gif", astro.resize((128, 128)), dict(save_all=True, duration=100,
                                                              append_images=[chelsea.resize((128, 128))])),
        ("chelsea_lossless.webp", chelsea, dict(lossless=True)), ("chelsea_lossy.webp", chelsea, dict(quality=80)),
        ("chelsea_alpha_lossless.webp", rgba, dict(lossless=True)),
        ("chelsea_alpha_lossy.webp", rgba, dict(quality=75)),
        ("astronaut_exif6.webp", astro.crop((0, 0, 512, 400)), dict(quality=85, exif=exif)),
        ("camera_grey_lossy.webp", camera, dict(quality=70)),
        ("chelsea.bmp", chelsea.crop((1, 1, 300, 222)), {}), ("camera_grey.bmp", camera.resize((203, 150)), {}),
        ("coffee_palette.bmp", coffee.resize((301, 200)).quantize(64), {}), ("chelsea_alpha.bmp", rgba, {}),
        ("horse_1bit.bmp", Image.fromarray(sd.horse()).convert("1"), {}),
    ]
    for name, im, kw in saves:
        im.save(d / name, **kw)
    return sorted(d.iterdir())


# --- tiny exported models -----------------------------------------------------------------------------------------
def eval_folder(d: Path) -> Path:
    for k in range(3):
        (d / f"c{k}").mkdir(parents=True)
        for i in range(3):
            img = np.random.default_rng(10 * k + i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(img).save(d / f"c{k}" / f"{i}.png")
    return d


def with_metadata(src: Path, dst: Path, **changes) -> Path:
    from vitlab.onnx.graph import get_metadata, set_metadata

    model = onnx.load(src)
    set_metadata(model, {**get_metadata(model), **changes})
    onnx.save(model, dst)
    return dst


def detector(out: Path) -> Path:
    from vitlab.onnx.detect import OUTPUTS, DetectionExport
    from vitlab.onnx.graph import model_metadata, set_metadata

    torch.manual_seed(0)
    det = vitlab.create_detector("vitdet_scenes", num_classes=3, labels=["a", "b", "c"], img_size=64, embed_dim=32,
                                 depth=2, num_heads=2, fpn_channels=32, num_convs=1).eval()
    with torch.no_grad():  # untrained, with scores spread out and boxes a few strides wide (as test_detect_onnx)
        det.head.classification_head.cls_logits.bias.copy_(torch.tensor([0.5, -0.5, -3.0]))
        det.head.classification_head.cls_logits.weight.mul_(20)
        det.head.regression_head.bbox_reg.bias.fill_(1.5)
    piece = DetectionExport(det, dict(score_thresh=0.45, nms_thresh=0.6, topk=100, max_det=12, class_agnostic=False))
    graph = piece.graph(23)
    set_metadata(graph, model_metadata(det, "vitdet_scenes", "onnx", 23, "fp32", list(OUTPUTS), **piece.metadata()))
    onnx.save(graph, out / "det.onnx")
    return out / "det.onnx"


def int8_variant(src: Path, dst: Path) -> Path:
    """The exporter's int8 variant of ``src`` (vitlab.onnx.precision.to_int8), its metadata saying so."""
    from vitlab.onnx.graph import get_metadata, set_metadata
    from vitlab.onnx.precision import to_int8

    fp32 = onnx.load(src)
    int8 = to_int8(fp32)
    set_metadata(int8, {**get_metadata(fp32), "precision": "int8", "int8_mode": "dynamic"})
    onnx.save(int8, dst)
    return dst


def generator(out: Path) -> Path:
    from vitlab.tasks import DiffusionTask

    torch.manual_seed(0)
    task = DiffusionTask(model_name="dit_fmnist_tiny", class_names=[f"c{i}" for i in range(10)], sample_steps=4,
                         guidance=2.0)
    with torch.no_grad():  # adaLN-Zero starts at zero (v = 0): give every weight something to do
        for p in task.ema.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vitlab.export_onnx(task.eval(), out / "gen", ["fp32"], allow_degraded=True)
    return out / "gen" / "model.onnx"
