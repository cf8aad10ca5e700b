"""Predictor: one API over checkpoints and ONNX, every input answered once, weird-but-valid images answered like
a clean copy, bad ones as error records; CLI writers, resume, overlays; exactly-once multi-process prediction."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import REPO, VITLAB, needs_fmnist
from vitlab.errors import VitlabError

pytestmark = needs_fmnist


def _rgba_on_white(rgb, alpha):
    a = alpha[:, :, None].astype(np.float64) / 255
    return (rgb * a + 255 * (1 - a) + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fmnist_test):
    """Generated here, never committed: (valid files with the clean array they must read as, bad files)."""
    d = tmp_path_factory.mktemp("corpus")
    grey = fmnist_test[0][3]  # a real 28x28 image
    rgb = np.repeat(grey[:, :, None], 3, 2)
    valid, bad = {}, []

    def save(name, img, clean, **kw):
        img.save(d / name, **kw)
        valid[str(d / name)] = clean

    save("L.png", Image.fromarray(grey), grey)
    save("1.png", Image.fromarray(grey).convert("1", dither=Image.Dither.NONE),
         np.where(grey >= 128, 255, 0).astype(np.uint8))
    save("LA.png", Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA"), grey)
    alpha = np.full_like(grey, 255)
    alpha[:, :10] = 0
    save("RGBA.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), _rgba_on_white(rgb, alpha))
    pal = Image.fromarray(grey).convert("P")  # palette image; index of the darkest colour made transparent
    idx = np.asarray(pal)
    save("P_transparent.png", pal, np.where(idx == idx[0, 0], 255, grey).astype(np.uint8),
         transparency=int(idx[0, 0]))
    save("I16.png", Image.fromarray(grey.astype(np.uint16) * 257), grey)
    save("I16.tif", Image.fromarray(grey.astype(np.uint16) * 257), grey)
    save("I32.tif", Image.fromarray(grey.astype(np.int32) * 257, "I"), grey)
    save("F.tif", Image.fromarray(grey.astype(np.float32) / 255, "F"), grey)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=100)
    valid[str(d / "cmyk.jpg")] = np.asarray(Image.open(d / "cmyk.jpg").convert("RGB"))
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    save("anim.gif", frames[0], grey, save_all=True, append_images=frames[1:], duration=100)
    ops = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
           5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90], 7: [Image.Transpose.TRANSVERSE],
           8: [Image.Transpose.ROTATE_270]}
    upright = Image.fromarray(grey[:, 2:])  # 28x26: not square, so a missed rotation changes the input
    for k in range(1, 9):  # stored pixels = the inverse of the transform orientation k asks the viewer to apply
        stored = upright
        for op in ops.get(k, []):
            stored = stored.transpose(op)
        exif = Image.Exif()
        exif[0x0112] = k
        save(f"exif{k}.png", stored, np.asarray(upright), exif=exif)
    save("one_pixel.png", Image.fromarray(grey[14:15, 14:15]), grey[14:15, 14:15])
    big = Image.fromarray(rgb).resize((3000, 2000), Image.Resampling.BICUBIC)
    save("large.jpg", big, None, quality=90)
    valid[str(d / "large.jpg")] = np.asarray(Image.open(d / "large.jpg"))
    good = (d / "L.png").read_bytes()
    jpg = (d / "large.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    Image.new("1", (10000, 9000)).save(d / "bomb.png")  # 90 MP > the default 89.5 MP guard, ~10 kB on disk
    (d / "folder.jpg").mkdir()
    os.symlink(d / "gone.png", d / "dangling.png")
    (d / "locked.png").write_bytes(good)
    os.chmod(d / "locked.png", 0)
    bad = ["truncated.jpg", "empty.png", "text.jpg", "bomb.png", "folder.jpg", "dangling.png"]
    if os.geteuid() != 0:  # root reads anything: the permission case only means something for other users
        bad.append("locked.png")
    return valid, [str(d / b) for b in bad]


@pytest.mark.parametrize("backend", ["ckpt", "onnx"])
def test_every_input_one_record_valid_ones_like_a_clean_copy(backend, corpus, exported, trained_ckpt):
    valid, bad = corpus
    predictor = vitlab.Predictor.load(trained_ckpt if backend == "ckpt" else exported["fp32"])
    inputs = [*valid, *bad]
    results = predictor.predict(inputs, batch_size=5, num_workers=1, topk=10)
    assert [r.index for r in results] == list(range(len(inputs))) and [r.source for r in results] == inputs
    for r in results[len(valid):]:
        assert r.error and r.label is None, r
    assert all(r.error is None for r in results[:len(valid)]), [r.error for r in results if r.error]
    assert "decompression bomb" in results[inputs.index(bad[3])].error
    assert "directory" in results[inputs.index(bad[4])].error
    clean = predictor.predict([c for c in valid.values()], batch_size=7, num_workers=0, topk=10)
    for r, c in zip(results, clean):
        assert r.class_id == c.class_id, r.source
        np.testing.assert_allclose([t["prob"] for t in r.topk], [t["prob"] for t in c.topk], atol=1e-5)


def test_checkpoint_and_onnx_agree_on_real_images(exported, trained_ckpt, fmnist_test, tmp_path):
    images, labels = fmnist_test
    for i in range(200):
        Image.fromarray(images[i]).save(tmp_path / f"{i:03d}.png")
    a = vitlab.Predictor.load(trained_ckpt).predict(tmp_path, batch_size=64, num_workers=1)
    b = vitlab.Predictor.load(exported["fp32"]).predict(str(tmp_path / "*.png"), batch_size=17, num_workers=0)
    assert [r.class_id for r in a] == [r.class_id for r in b]
    assert np.mean([r.class_id == y for r, y in zip(a, labels[:200])]) > 0.7


def test_sources_of_every_kind_in_input_order(trained_ckpt, fmnist_test, tmp_path):
    images = fmnist_test[0]
    for i in range(3):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("# inputs\n0.png\n\n2.png\n")
    predictor = vitlab.Predictor.load(trained_ckpt)
    chw_float = torch.from_numpy(images[4][None].astype(np.float32) / 255)
    inputs = [str(tmp_path / "1.png"), Image.fromarray(images[3]), images[4], torch.from_numpy(images[4][None]),
              chw_float, str(tmp_path / "list.txt")]
    res = list(predictor.stream(inputs, batch_size=2, num_workers=0))
    assert [r.source for r in res][:2] == [str(tmp_path / "1.png"), "<Image 1>"]
    assert [r.source for r in res][-2:] == [str(tmp_path / "0.png"), str(tmp_path / "2.png")]  # the list file
    assert res[2].class_id == res[3].class_id == res[4].class_id and res[2].error is None
    np.testing.assert_allclose(res[2].prob, res[4].prob, atol=1e-6)


def test_explain_writes_rollout_overlays(trained_ckpt, exported, fmnist_test, tmp_path):
    predictor = vitlab.Predictor.load(trained_ckpt)
    res = predictor.explain([fmnist_test[0][0], fmnist_test[0][1]], tmp_path / "maps", num_workers=0)
    assert all(Image.open(r.overlay).size == (224, 224) for r in res)
    from vitlab.inference.explain import attention_rollout

    maps = attention_rollout(predictor.backend.model, fmnist_test[0][:2, None].copy())
    assert maps.shape == (2, 4, 4) and maps.min() == 0.0 and maps.max() == 1.0
    with pytest.raises(VitlabError, match="explain needs the checkpoint"):
        vitlab.Predictor.load(exported["fp32"]).explain([fmnist_test[0][0]], tmp_path / "x")


def _run(args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([*VITLAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(res.stderr[-3000:])
    return res


def test_cli_predict_jsonl_csv_resume(trained_ckpt, exported, corpus, tmp_path, capsys):
    from vitlab.cli import main

    valid, bad = corpus
    files = [*list(valid)[:6], bad[0], bad[2]]
    out = tmp_path / "preds.jsonl"
    main(["predict", str(exported["int8"]), *files[:4], "--out", str(out), "--workers", "0"])
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 4
    main(["predict", str(exported["int8"]), *files, "--out", str(out), "--resume", "--workers", "0"])
    assert "4 from the earlier output" in capsys.readouterr().out
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in recs] == files and [r["index"] for r in recs] == list(range(8))
    assert recs[:4] == [{**r, "index": i} for i, r in enumerate(first)] and recs[6]["error"]
    csv_out = tmp_path / "preds.csv"
    main(["predict", str(trained_ckpt), *files, "--out", str(csv_out), "--overlays", str(tmp_path / "ov"),
          "--explain", "--workers", "0"])
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("index,source,label") and len(lines) == 9
    assert len(list((tmp_path / "ov").glob("*.png"))) == 6
    with pytest.raises(SystemExit):
        main(["predict", str(trained_ckpt), *files, "--out", str(tmp_path / "p.txt")])
    assert "vitlab: error: output" in capsys.readouterr().err  # one line, naming the file and the fix


@pytest.mark.slow
def test_two_process_prediction_answers_every_input_exactly_once(trained_ckpt, corpus, tmp_path):
    valid, bad = corpus
    files = [*valid, *bad]  # an odd count: DistributedSampler pads rank 1 with a repeat of the first sample
    assert len(files) % 2 == 1 or files.append(files[0]) is None
    out = tmp_path / "ddp.jsonl"
    _run(["predict", str(trained_ckpt), *files, "--out", str(out), "--devices", "2", "--accelerator", "cpu",
          "--batch-size", "4", "--workers", "0"])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(len(files))) and [r["source"] for r in recs] == files
    assert sum(r["error"] is not None for r in recs) == len(bad)
    single = vitlab.Predictor.load(trained_ckpt).predict(files, num_workers=0)
    assert [r["class_id"] for r in recs] == [r.class_id for r in single]
    assert not list(tmp_path.glob("*.part"))
