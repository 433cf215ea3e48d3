"""Model files for the benchmark: real safetensors files (one uint8 tensor), which validation
parses as it would a pipeline's, of any size, written a block at a time."""

from __future__ import annotations

import json


def safetensors_prefix(total_bytes: int) -> bytes:
    """The first bytes of a `total_bytes`-long safetensors file whose one tensor fills the rest:
    the 8-byte header length, then the JSON header padded with spaces (the format allows it)."""
    data = total_bytes
    for _ in range(3):  # the header's length depends on the digits of the data's, and back
        header = json.dumps({"weights": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}}).encode()
        header += b" " * (-len(header) % 8)
        data = total_bytes - 8 - len(header)
    if data < 0:
        raise ValueError(f"{total_bytes} bytes are too few for a safetensors file")
    return len(header).to_bytes(8, "little") + header
