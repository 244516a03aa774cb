"""What the commands share: loading the model, running it in padded batches, checking outputs
and numeric options."""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional, Sequence

import numpy as np

from ..data.image_io import save_png
from ..utils.files import check_replaceable

# 2: adds 'keys' (input-relative names); 3: the model by content (hub.identity.token_settings).
# Versions 1 and 2 are still read.
TOKEN_FILE_VERSION = 3


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help states its default exactly once: appended where the option has a
    value by default, left to the help text where that says it in words (``None`` or ``False``
    mean "not given" and are never printed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def default_model() -> str:
    from .. import DEFAULT_MODEL

    return DEFAULT_MODEL


def load_model(args: argparse.Namespace):
    """The model of ``--model`` (a folder, an LWM pickle or a Hub id; default: the shipped one) at
    ``--revision``, computing in ``--dtype``."""
    import jax.numpy as jnp

    from ..hub.modeling import FlaxVQGANModel

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    kwargs = {"revision": args.revision} if args.revision else {}
    return FlaxVQGANModel.from_pretrained(model_name(args), dtype=dtype, **kwargs)


def model_name(args: argparse.Namespace) -> str:
    """The model as a token file records it: a local folder as an absolute path (the file may be
    decoded from another working directory), a Hub id as given."""
    model = args.model or default_model()
    return os.path.abspath(model) if os.path.exists(model) else model


def image_processor(args: argparse.Namespace, model: Any, recorded_range: Optional[Sequence[float]] = None) -> Any:
    """The model's ``VQGANImageProcessor``: its ``preprocessor_config.json`` (beside the weights,
    in the Hub snapshot, or beside an LWM pickle) where there is one, else the model's resolution
    and taming's [-1, 1]; then ``--size`` and ``--pixel-range`` override (else ``recorded_range``,
    the range a token file was made with). Every image the commands read or write goes through it
    (geometry, value range, and back to uint8)."""
    from ..data.processing import checked_pixel_range, processor_for_model

    given = getattr(args, "pixel_range", None)
    given = checked_pixel_range(given, "--pixel-range LOW HIGH") if given else None
    processor = processor_for_model(model, getattr(args, "size", None), given or recorded_range)
    if processor.output_size is None:
        where = model.source.name if model.source is not None else "the model's image processor"
        raise ValueError(f"{where}: do_center_crop is off; the command line needs one image size (give --size)")
    return processor


def bucket_size(count: int, batch_size: int) -> int:
    """The batch shape a chunk of ``count`` items runs at: the next power of two, at most
    ``batch_size``. A ragged last chunk then reuses a compiled shape instead of compiling a new
    program (seconds for the f16 model) for a one-off size."""
    if not 0 < count <= batch_size:
        raise ValueError(f"chunk of {count} items does not fit batch size {batch_size}")
    return min(1 << (count - 1).bit_length(), batch_size)


class Runner:
    """Encode/decode on one device, or on all local devices with ``--replicate`` (pmap); chunks
    are padded to [`bucket_size`] rows and the padding dropped."""

    def __init__(self, model: Any, replicate: bool, batch_size: int, processor: Any) -> None:
        from ..data.parallel import replicate_params

        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.replicated = replicate_params(model.params) if replicate else None

    def _padded(self, array: np.ndarray) -> np.ndarray:
        from ..data.parallel import pad_batch

        return pad_batch(array, bucket_size(len(array), self.batch_size))[0]  # a multiple ≥ len: exactly that

    def encode(self, pixels: np.ndarray, grid: Sequence[int]) -> np.ndarray:
        """``pixels`` in the model's range (the processor's ``to_pixel_values``) → tokens (B, h, w)."""
        from ..data.parallel import pmap_encode

        padded = self._padded(pixels)
        if self.replicated is None:
            indices = self.model.encode(padded).indices
        else:
            indices = pmap_encode(self.model, padded, self.replicated).indices
        return np.asarray(indices)[: len(pixels)].reshape(-1, *grid)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        from ..data.parallel import pmap_decode_code

        padded = self._padded(tokens)
        if self.replicated is None:
            pixels = self.model.decode_code(padded)
        else:
            pixels = pmap_decode_code(self.model, padded, self.replicated)
        return self.processor.postprocess(np.asarray(pixels)[: len(tokens)])


def batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def progress_bar(total: Optional[int], desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)


def check_output_file(path: str) -> None:
    """Refuse an ``--out`` file that cannot be written, or that is a device, FIFO or symlink (it
    would be replaced by a file), before any work is done."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(f"--out {path}: is a folder; give a file name")
    try:
        check_replaceable(path)
    except ValueError as err:
        raise ValueError(f"--out {err}") from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"--out {path}: folder {folder} is not writable")


def check_output_folder(path: str) -> None:
    """Refuse an ``--out`` folder that cannot be created or written, before any work is done and
    without creating anything (a refused run leaves nothing behind)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"--out {path}: exists and is not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"--out {path}: cannot create the folder ({existing} is not a folder)")
    if not os.access(existing, os.W_OK):
        where = "folder is" if existing == os.path.abspath(path) else f"{existing} is"
        raise PermissionError(f"--out {path}: {where} not writable")


def prepare_output_folder(path: str) -> None:
    """Create the ``--out`` folder (or accept an existing one): once the inputs and the model
    have been accepted, so that a refused run leaves no folder behind."""
    check_output_folder(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out {path}: cannot create the folder ({err.strerror})") from None


def save_png_under(folder: str, name: str, image: np.ndarray) -> None:
    """Write ``folder/name`` (``name`` a checked key); a subfolder that is a symlink to elsewhere
    is refused before anything is created through it, and so is an existing entry that is not a
    regular file (a FIFO, a device, a symlink): outputs never land outside ``folder`` or replace
    something that is not ours."""
    path = os.path.join(folder, *name.split("/"))
    os.makedirs(folder, exist_ok=True)
    root, existing = os.path.realpath(folder), os.path.dirname(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    inside = os.path.realpath(existing)
    if inside != root and not inside.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError(f"--out {folder}: {name!r} would be written through a symlink to outside it")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
        raise ValueError(f"--out {folder}: {name!r} exists and is not a regular file; not replacing it")
    save_png(path, image)


def _convert(kind: type, text: str):
    """``kind(text)``, or the one-line argparse error that names what was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def _number(kind: type, minimum: float, name: str):
    """An argparse type: ``kind`` values ≥ ``minimum`` (finite), refused by the parser otherwise."""

    def parse(text: str):
        value = _convert(kind, text)
        # nan or infinite; not math.isfinite, which raises on an integer too large for a float
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum {minimum} for {name}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, 1, "a positive integer")


COUNT = _number(int, 0, "a count")


NON_NEGATIVE = _number(float, 0.0, "a non-negative number")


def fraction(name: str, closed_at_zero: bool = True, closed_at_one: bool = False):
    """An argparse type: a number between 0 and 1 (each end included or not), so a wrong value is
    refused before anything is loaded."""
    interval = f"{'[' if closed_at_zero else '('}0, 1{']' if closed_at_one else ')'}"

    def parse(text: str) -> float:
        value = _convert(float, text)
        above_zero = value >= 0 if closed_at_zero else value > 0
        below_one = value <= 1 if closed_at_one else value < 1
        if not (above_zero and below_one):
            raise argparse.ArgumentTypeError(f"{name} must be in {interval}; got {text}")
        return value

    parse.__name__ = name
    return parse


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs a model."""
    p.add_argument("--model", help="folder, LWM params pickle or Hub id 'org/name' (default: the shipped model)")
    p.add_argument("--revision", help="Hub revision of --model: branch, tag or commit (default: main)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="images per compiled call")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="computation dtype")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--pixel-range",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="the model's input range (default: its preprocessor_config.json, else -1 1)",
    )
    p.add_argument("--replicate", action="store_true", help="use all local devices (pmap; any batch size)")
