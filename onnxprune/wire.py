"""The protobuf wire format: where a serialized model's initializers keep their bytes, and length-delimited fields.

Reading `tensor.raw_data` from a parsed ModelProto copies the bytes (and ByteSize() serializes them), so checking
that every weight holds the bytes its shape needs, or reading every weight once, would copy all the weights once
more. The serialized file has each raw_data field's length in front of it: this walks
ModelProto.graph.initializer[*].raw_data field headers and skips the bytes themselves, so the weights can be
sized, or read as views of the file's bytes.
"""
from __future__ import annotations

_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _messages(buffer: bytes, start: int, end: int, wanted: int):
    """(start, end) of every length-delimited field numbered `wanted` between start and end, in order."""
    pos = start
    while pos < end:
        key, pos = _varint(buffer, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buffer, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buffer, pos)
            if number == wanted:
                yield pos, pos + length
            pos += length
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by ONNX")
    if pos != end:
        raise ValueError("a field runs past the end of its message")


def initializer_raw_spans(buffer: bytes) -> list[tuple[int, int] | None]:
    """(start, end) of each initializer's raw_data bytes in `buffer` (None: no raw_data field), in the order the
    parsed model lists them."""
    spans: list[tuple[int, int] | None] = []
    for graph in _messages(buffer, 0, len(buffer), _GRAPH):
        spans += _graph_raw_spans(buffer, *graph)
    return spans


def initializer_raw_sizes(buffer: bytes) -> list[int | None]:
    """len(raw_data) of each initializer (None: no raw_data field), in the order the parsed model lists them."""
    return [None if span is None else span[1] - span[0] for span in initializer_raw_spans(buffer)]


def _graph_raw_spans(buffer: bytes, start: int, end: int) -> list[tuple[int, int] | None]:
    spans: list[tuple[int, int] | None] = []
    for tensor in _messages(buffer, start, end, _INITIALIZER):
        raws = list(_messages(buffer, *tensor, _RAW_DATA))
        spans.append(raws[-1] if raws else None)  # a repeated scalar field: the last one wins, as in parsing
    return spans


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(number: int, parts: list[bytes]) -> list[bytes]:
    """Field `number` (wire type 2) holding the concatenated `parts`: its key and length, then the parts."""
    return [encode_varint(number << 3 | 2) + encode_varint(sum(map(len, parts))), *parts]
