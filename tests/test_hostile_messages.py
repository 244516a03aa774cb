"""One line naming the file and the field for each config a user or a Hub repo may hand us
(issue 32, part 6: the cases that gave raw library messages)."""

from __future__ import annotations

import json

import pytest

from vqgan_flax import VQGANConfig, VQGANImageProcessor

GOOD = {"do_resize": True, "size": {"shortest_edge": 16}, "do_center_crop": True,
        "crop_size": {"height": 16, "width": 16}, "pixel_range": [-1, 1],
        "image_processor_type": "VQGANImageProcessor"}  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        ({"crop_size": {"height": 0, "width": 0}}, r"crop_size\['height'\] must be an integer in \[1, 65536\]; got 0"),
        (
            {"crop_size": {"height": -4, "width": 16}},
            r"crop_size\['height'\] must be an integer in \[1, 65536\]; got -4",
        ),
        ({"size": {"shortest_edge": "16"}}, r"size\['shortest_edge'\] must be an integer in \[1, 65536\]; got '16'"),
        ({"size": {"height": 16}}, r"size must be \{'shortest_edge': int\}; got \{'height': 16\}"),
        ({"size": 16}, r"size must be \{'shortest_edge': int\}; got 16"),
        ({"do_resize": "no"}, r"do_resize must be true or false; got str 'no'"),
        ({"do_center_crop": 0}, r"do_center_crop must be true or false; got int 0"),
        ({"preprocess": 1}, r"preprocess: not a setting \(it names a method of the processor\)"),
        ({"pixel_range": [1, -1]}, r"pixel_range must be \(low, high\) with low < high"),
    ],
)
def test_preprocessor_config_values_are_named_with_the_file(tmp_path, change, message):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(ValueError, match=rf"{tmp_path}: preprocessor_config.json: .*{message}"):
        VQGANImageProcessor.from_pretrained(tmp_path)


def test_a_good_preprocessor_config_still_loads(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(GOOD))
    processor = VQGANImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": 16} and processor.output_size == (16, 16)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ch": -1}, r"ch=-1 must be an integer in \[1, 4096\]"),
        ({"resolution": 4.9}, r"resolution=4.9 must be an integer"),
        ({"ch_mult": "12"}, r"ch_mult='12' must be a non-empty list of positive integers"),
        ({"quantizer": 3}, r"Unknown quantizer 3"),
    ],
)
def test_config_json_values_are_named_with_the_folder(tiny, tmp_path, change, message):
    config = json.loads((__import__("pathlib").Path(tiny) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=rf"{tmp_path}: config.json: {message}"):
        VQGANConfig.from_pretrained(tmp_path)


def test_a_taming_yaml_with_wrong_types_names_the_file(tmp_path):
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    ddconfig: [1, 2]\n    n_embed: 4\n")
    with pytest.raises(ValueError, match=rf"{tmp_path}/model.yaml"):
        VQGANConfig.from_taming_yaml(tmp_path / "model.yaml")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x93\x01\x02\x03", r"holds a list at the top, not a parameter tree"),
        (b"\x91" * 100_000 + b"\xc0", r"StackError"),
    ],
)
def test_msgpack_weights_that_are_no_tree_name_the_file(tiny, tmp_path, data, message):
    """A top-level list used to escape as a bare AssertionError; deep nesting names the file."""
    from vqgan_flax import FlaxVQGANModel

    (tmp_path / "config.json").write_text((__import__("pathlib").Path(tiny) / "config.json").read_text())
    (tmp_path / "flax_model.msgpack").write_bytes(data)
    with pytest.raises(OSError, match=rf"{tmp_path}/flax_model.msgpack: .*{message}"):
        FlaxVQGANModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "config, message",
    [
        (b"[1, 2]", r"config.json: an LWM config: not a JSON object \(a list\)"),
        (b'{"hidden_channels": 8,', r"config.json: an LWM config: not JSON"),
        (b"\xff\xfe{}", r"config.json: an LWM config: not UTF-8 text"),
        (b'{"model_type": "vqgan"}', r"config.json: an LWM config: unknown LWM config fields \['model_type'\]"),
        (b'{"channel_mult": 3}', r"config.json: an LWM config: .*int"),
    ],
)
def test_an_lwm_config_beside_the_pickle_is_named_when_wrong(tmp_path, config, message):
    """The config.json LWM keeps beside its pickle is read as untrusted: bounded, a regular file, an
    object of LWM's fields; what is wrong is one line naming it."""
    from utils import FIXTURES

    from vqgan_flax.conversion import load_lwm_checkpoint

    (tmp_path / "vqgan").write_bytes((FIXTURES / "lwm" / "vqgan").read_bytes())
    (tmp_path / "config.json").write_bytes(config)
    with pytest.raises(ValueError, match=message):
        load_lwm_checkpoint(tmp_path / "vqgan")


def test_an_lwm_config_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    from utils import FIXTURES

    from vqgan_flax.conversion import load_lwm_checkpoint

    (tmp_path / "vqgan").write_bytes((FIXTURES / "lwm" / "vqgan").read_bytes())
    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"config.json: a FIFO, not a regular file"):
        load_lwm_checkpoint(tmp_path / "vqgan")
