"""Bytes on disk: msgpack records with size limits, and checksummed zstd checkpoints.

Nothing here touches LMDB; it only turns values into bytes and back, refusing
anything too large or damaged.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterable
from typing import Any

import msgpack
import zstandard

from runtime.store.errors import CorruptCheckpointError, StoreError

MAX_RECORD_BYTES = 1 << 20
MAX_CHECKPOINT_BYTES = 1 << 30

_CKPT_MAGIC = b"OPCK"
_CKPT_VERSION = 1
# magic, version, covered seq, raw length, blake2b-256 of everything after the header
_CKPT_HEADER = struct.Struct(">4sBQQ32s")


_local = threading.local()


def packer() -> msgpack.Packer:
    """This thread's reusable Packer (packb() builds a new one per call, which costs
    more than packing a small record). Its errors are raw: pack() turns them into
    StoreError, so call pack() again for the message when a fast loop fails."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    return packer


def pack(value: Any, limit: int = MAX_RECORD_BYTES) -> bytes:
    """msgpack `value`; StoreError if it is not plain data or larger than `limit`."""
    try:
        data = packer().pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"value cannot be stored as msgpack: {exc}") from None
    if len(data) > limit:
        raise StoreError(f"record of {len(data)} bytes exceeds the {limit}-byte limit")
    return data


def pack_many(values: Iterable[Any], limit: int = MAX_RECORD_BYTES) -> list[bytes]:
    """pack() for a run of records, in one tight loop (bulk appends)."""
    pack_one = packer().pack
    try:
        datas = [pack_one(v) for v in values]
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"value cannot be stored as msgpack: {exc}") from None
    if datas and max(map(len, datas)) > limit:
        big = next(i for i, d in enumerate(datas) if len(d) > limit)
        raise StoreError(f"record {big} of the batch is {len(datas[big])} bytes, over the "
                         f"{limit}-byte limit")
    return datas


def unpack(data: bytes, limit: int = MAX_RECORD_BYTES) -> Any:
    """Inverse of pack, refusing input over `limit` bytes.

    msgpack also bounds every container and string by the input's length, so
    hostile bytes cannot make it allocate more than they could describe.
    """
    if len(data) > limit:
        raise StoreError(f"stored value of {len(data)} bytes exceeds the {limit}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=limit,
                               max_str_len=limit, max_array_len=limit, max_map_len=limit)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StoreError(f"stored value is not valid msgpack: {exc}") from None


def encode_checkpoint(covered_seq: int, payload: bytes, level: int = 3) -> bytes:
    """zstd-compress `payload` and prefix a header carrying seq, length and checksum."""
    if len(payload) > MAX_CHECKPOINT_BYTES:
        raise StoreError(f"checkpoint of {len(payload)} bytes exceeds {MAX_CHECKPOINT_BYTES}")
    body = zstandard.ZstdCompressor(level=level).compress(payload)
    digest = hashlib.blake2b(_seal(covered_seq, len(payload)) + body, digest_size=32).digest()
    return _CKPT_HEADER.pack(_CKPT_MAGIC, _CKPT_VERSION, covered_seq, len(payload), digest) + body


def decode_checkpoint(blob: bytes) -> tuple[int, bytes]:
    """(covered seq, payload) of a checkpoint blob; CorruptCheckpointError if it does not verify."""
    if len(blob) < _CKPT_HEADER.size:
        raise CorruptCheckpointError(f"checkpoint truncated to {len(blob)} bytes")
    magic, version, seq, raw_len, digest = _CKPT_HEADER.unpack_from(blob)
    if magic != _CKPT_MAGIC or version != _CKPT_VERSION:
        raise CorruptCheckpointError(f"not a checkpoint (magic {magic!r}, version {version})")
    body = blob[_CKPT_HEADER.size:]
    if hashlib.blake2b(_seal(seq, raw_len) + body, digest_size=32).digest() != digest:
        raise CorruptCheckpointError(f"checkpoint at seq {seq}: checksum mismatch")
    if raw_len > MAX_CHECKPOINT_BYTES:
        raise CorruptCheckpointError(f"checkpoint at seq {seq}: claims {raw_len} bytes")
    try:
        payload = zstandard.ZstdDecompressor().decompress(body, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise CorruptCheckpointError(f"checkpoint at seq {seq}: {exc}") from None
    if len(payload) != raw_len:
        raise CorruptCheckpointError(f"checkpoint at seq {seq}: length mismatch")
    return seq, payload


def _seal(seq: int, raw_len: int) -> bytes:
    return struct.pack(">QQ", seq, raw_len)
