import numpy as np
import pytest

from vitlab.errors import VitlabError
from vitlab.preprocess import PreprocessCfg


def test_round_trip_through_json_dict():
    cfg = PreprocessCfg(input_size=(1, 28, 28), mean=(0.3,), std=(0.4,), labels=("a", "b"), resize="letterbox")
    assert PreprocessCfg.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad,match", [
    ({"input_size": (2, 8, 8), "mean": (0, 0), "std": (1, 1)}, "input_size"),
    ({"mean": (0.5,)}, "mean/std"),
    ({"resize": "stretch"}, "resize"),
    ({"interpolation": "lanczos9"}, "interpolation"),
    ({"crop_pct": 0.0}, "crop_pct"),
])
def test_bad_values_are_named(bad, match):
    with pytest.raises(VitlabError, match=match):
        PreprocessCfg(**bad)


def test_unknown_key_named():
    with pytest.raises(VitlabError, match="colour"):
        PreprocessCfg.from_dict({"colour": 1})


@pytest.mark.parametrize("policy", ["squash", "center_crop", "letterbox"])
@pytest.mark.parametrize("shape", [(100, 60, 3), (7, 300, 3), (1, 1, 3), (50, 50, 1)])
def test_resize_reaches_input_size(policy, shape):
    cfg = PreprocessCfg(input_size=(3, 32, 48), resize=policy, crop_pct=0.875)
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    assert cfg.resize_image(img).shape == (32, 48, shape[2])


def test_letterbox_pads_with_zeros_and_keeps_aspect():
    cfg = PreprocessCfg(input_size=(3, 32, 32), resize="letterbox")
    out = cfg.resize_image(np.full((10, 40, 3), 200, np.uint8))
    assert out[0].max() == 0 and out[16].min() == 200  # 40x10 -> 32x8 band in the middle
    assert (out.sum(axis=(1, 2)) > 0).sum() == 8


def test_center_crop_keeps_the_centre():
    img = np.zeros((100, 100, 1), np.uint8)
    img[25:75, 25:75] = 255
    cfg = PreprocessCfg(input_size=(1, 50, 50), mean=(0.5,), std=(0.5,), resize="center_crop", crop_pct=0.5)
    assert cfg.resize_image(img).min() == 255  # crop_pct 0.5: exactly the central 50% of the image
    assert cfg.replace(crop_pct=1.0).resize_image(img).min() == 0  # the whole image, scaled down


def test_channel_conversion():
    grey = PreprocessCfg(input_size=(1, 4, 4), mean=(0.5,), std=(0.5,))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    assert grey.to_model_layout(rgb).shape == (1, 4, 4)
    assert grey.to_model_layout(rgb)[0, 0, 0] == round(255 * 0.299)
    assert PreprocessCfg(input_size=(3, 4, 4)).to_model_layout(np.full((4, 4, 1), 9, np.uint8)).tolist() == \
        np.full((3, 4, 4), 9).tolist()
