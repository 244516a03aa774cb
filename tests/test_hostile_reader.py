"""The checkpoint reader's last holes (issue 32, part 1): a pickle that replaces a storage's state,
calls numpy.ndarray for uninitialised memory, claims a huge bytearray, or references one value
many times to multiply it; and a taming YAML whose aliases expand to gigabytes. Each is refused
with one line naming the file, quickly and without a large allocation."""

from __future__ import annotations

import resource
import struct

import numpy as np
import pytest
from crafted_pickles import PickleWriter, write_zip

from vqgan_flax.conversion import CheckpointError, load_pickle, load_torch_zip
from vqgan_flax.models.configuration import MAX_YAML_BYTES, VQGANConfig


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_pickle_cannot_replace_a_storage_it_was_given(tmp_path):
    """BUILD on the persistent storage (the state a plain object would take into its __dict__)
    is refused; before, the tensor then viewed whatever buffer the pickle put there."""

    def rebuilt_storage(p: PickleWriter) -> None:
        p.global_("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        p.raw(b"(").str_("storage").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(4).raw(b"tQ")
        p.raw(b"}").str_("data").global_("builtins", "frozenset").raw(b")R").raw(b"s")  # {"data": frozenset()}
        p.raw(b"b")  # BUILD: storage.__setstate__({"data": ...})
        p.int_(0).ints([10**6]).ints([1]).raw(b"\x89").global_("collections", "OrderedDict").raw(b")R").raw(b"tR")

    path = write_zip(tmp_path / "rebuilt.ckpt", PickleWriter().state_dict({"w": rebuilt_storage}),
                     {"0": np.zeros(4, np.float32).tobytes()})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"rebuilt.ckpt: storage 0: the pickle tries to set a storage's state"):
        load_torch_zip(path)


def test_numpy_ndarray_cannot_be_called_for_uninitialised_memory(tmp_path):
    plain = tmp_path / "heap.pkl"
    plain.write_bytes(
        PickleWriter().state_dict({"w": lambda p: p.global_("numpy", "ndarray").ints([1 << 20]).raw(b"R")})
    )
    with pytest.raises(CheckpointError, match=r"heap.pkl: refusing to call numpy.ndarray \(it would return uninit"):
        load_pickle(plain)


def test_a_bytearray_longer_than_the_pickle_is_refused_before_allocating(tmp_path):
    """12 bytes claiming 4 GiB: refused by the length check, not by running out of memory."""
    plain = tmp_path / "bytearray8.pkl"
    plain.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 4 << 30) + b".")
    before = _peak_rss_mb()
    with pytest.raises(
        CheckpointError, match=r"bytearray8.pkl: a BYTEARRAY8 claims 4294967296 bytes; the pickle holds 12"
    ):
        load_pickle(plain)
    assert _peak_rss_mb() - before < 100
    honest = tmp_path / "honest.pkl"  # an honest one still loads
    honest.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 3) + b"abc.")
    assert load_pickle(honest) == bytearray(b"abc")


def test_one_value_referenced_many_times_cannot_be_multiplied(tmp_path):
    """A 1 MiB string spelled once and turned into bytes 4096 times (4 GiB) through the memo:
    refused by the budget (twice the bytes read plus 1 MiB) after a few copies."""
    writer = PickleWriter().raw(b"(").global_("_codecs", "encode").raw(b"\x94")  # MEMOIZE 0: encode
    writer.str_("x" * (1 << 20)).raw(b"\x94")  # MEMOIZE 1: the string
    for _ in range(4096):
        writer.raw(b"h\x00h\x01\x85R")  # BINGET encode, BINGET string, TUPLE1, REDUCE
    plain = tmp_path / "multiplied.pkl"
    plain.write_bytes(bytes(writer.raw(b"l.").out))
    before = _peak_rss_mb()
    with pytest.raises(CheckpointError, match=r"multiplied.pkl: _codecs.encode would make the pickle build more than"):
        load_pickle(plain)
    assert _peak_rss_mb() - before < 200


def test_many_tensors_on_one_storage_cannot_be_multiplied(tmp_path):
    """Thousands of full views of one 4 MiB storage: each view is inside the storage, together they
    would be 16 GiB."""
    numel = 1 << 20
    entries = {f"w{i}": (lambda p: p.tensor("0", 0, (numel,), (1,), numel)) for i in range(4096)}
    path = write_zip(tmp_path / "views.ckpt", PickleWriter().state_dict(entries), {"0": bytes(4 * numel)})
    with pytest.raises(CheckpointError, match=r"views.ckpt: tensor on storage 0 would make the pickle build more"):
        load_torch_zip(path)
    # Two views of one storage (tied weights) are fine.
    tied = {
        "a": lambda p: p.tensor("0", 0, (numel,), (1,), numel),
        "b": lambda p: p.tensor("0", 0, (numel,), (1,), numel),
    }
    state = load_torch_zip(write_zip(tmp_path / "tied.ckpt", PickleWriter().state_dict(tied), {"0": bytes(4 * numel)}))
    assert state["a"].shape == state["b"].shape == (numel,)


BILLION_LAUGHS = """model:
  params:
    a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def test_taming_yaml_refuses_aliases_naming_the_line(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(ValueError, match=r"laughs.yaml: not a plain YAML taming config: aliases \(\*name\) are not "
                                         r"accepted \(line 4\)"):  # fmt: skip
        VQGANConfig.from_taming_yaml(path)


def test_taming_yaml_refuses_what_is_not_a_small_text_file(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_YAML_BYTES)
    with pytest.raises(ValueError, match=rf"big.yaml: {MAX_YAML_BYTES + 2} bytes, more than a model config's"):
        VQGANConfig.from_taming_yaml(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"model: \xff\xfe\n")
    with pytest.raises(ValueError, match=r"binary.yaml: not UTF-8 text \(byte 7\)"):
        VQGANConfig.from_taming_yaml(binary)
    with pytest.raises(ValueError, match=r": not a regular file"):
        VQGANConfig.from_taming_yaml(tmp_path)


def test_cli_prints_a_reason_even_for_an_empty_message(monkeypatch, capsys, tmp_path):
    """An error without a message prints its type, not 'error: ' and nothing."""
    from vqgan_flax.cli import convert

    def no_message(args):
        raise ValueError()

    monkeypatch.setattr(convert, "_config_from_args", no_message)
    code = convert.main(["--checkpoint", str(tmp_path / "x.ckpt"), "--config", "x", "--output", str(tmp_path / "o")])
    assert code == 1 and capsys.readouterr().err.strip().endswith("error: ValueError")
