"""Checkpoints written opcode by opcode, as an attacker would (no torch needed): the pickle
writer and the zip layout of ``torch.save`` that the hostile-input tests build on."""

from __future__ import annotations

import struct
import zipfile
from typing import Optional, Sequence


class PickleWriter:
    """Protocol-2 pickle opcodes, enough for torch's data.pkl layout."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def raw(self, opcodes: bytes) -> PickleWriter:
        self.out += opcodes
        return self

    def global_(self, module: str, name: str) -> PickleWriter:
        return self.raw(b"c" + f"{module}\n{name}\n".encode())

    def str_(self, text: str) -> PickleWriter:
        data = text.encode()
        return self.raw(b"X" + struct.pack("<I", len(data)) + data)

    def int_(self, number: int) -> PickleWriter:
        data = number.to_bytes((number.bit_length() + 8) // 8 or 1, "little", signed=True)
        return self.raw(b"\x8a" + bytes([len(data)]) + data)

    def ints(self, numbers: Sequence[int]) -> PickleWriter:
        self.raw(b"(")
        for number in numbers:
            self.int_(number)
        return self.raw(b"t")

    def tensor(
        self,
        key: str,
        offset: int,
        size: Sequence[int],
        stride: Sequence[int],
        numel: Optional[int],
        storage: str = "FloatStorage",
    ) -> PickleWriter:
        """torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())."""
        self.global_("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        self.raw(b"(").str_("storage").global_("torch", storage).str_(key).str_("cpu")
        if numel is not None:
            self.int_(numel)
        self.raw(b"tQ")  # TUPLE, BINPERSID
        self.int_(offset).ints(size).ints(stride).raw(b"\x89")  # NEWFALSE
        return self.global_("collections", "OrderedDict").raw(b")R").raw(b"tR")

    def state_dict(self, entries: dict) -> bytes:
        """``{name: callable writing one value}`` as a dict, then STOP."""
        self.raw(b"}(")
        for name, write in entries.items():
            self.str_(name)
            write(self)
        return bytes(self.raw(b"u.").out)


def write_zip(path, pickle_bytes: bytes, storages: dict, extra: Optional[dict] = None, byteorder: bytes = b"little"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
        for name, (data, compression) in (extra or {}).items():
            archive.writestr(name, data, compress_type=compression)
    return path
