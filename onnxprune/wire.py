"""The protobuf wire format: where a serialized model's initializers keep their bytes, and length-delimited fields.

Reading `tensor.raw_data` from a parsed ModelProto copies the bytes (and ByteSize() serializes them), so checking
that every weight holds the bytes its shape needs, or reading every weight once, would copy all the weights once
more. The serialized file has each raw_data field's length in front of it: this walks
ModelProto.graph.initializer[*].raw_data field headers and skips the bytes themselves, so the weights can be
sized, or read as views of the file's bytes.
"""
from __future__ import annotations

_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data
_DATA_TYPE = 2  # TensorProto.data_type


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buffer: bytes, start: int, end: int):
    """(number, wire type, header start, value start, value end) of every field between start and end, in order."""
    pos = start
    while pos < end:
        head = pos
        key, pos = _varint(buffer, pos)
        number, wire = key >> 3, key & 7
        value = pos
        if wire == 0:
            _, pos = _varint(buffer, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, value = _varint(buffer, pos)
            pos = value + length
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by ONNX")
        yield number, wire, head, value, pos
    if pos != end:
        raise ValueError("a field runs past the end of its message")


def _messages(buffer: bytes, start: int, end: int, wanted: int):
    """(start, end) of every length-delimited field numbered `wanted` between start and end, in order."""
    for number, wire, _, value, stop in _fields(buffer, start, end):
        if number == wanted and wire == 2:
            yield value, stop


def initializer_raw_spans(buffer: bytes) -> list[tuple[int, int] | None]:
    """(start, end) of each initializer's raw_data bytes in `buffer` (None: no raw_data field), in the order the
    parsed model lists them."""
    spans: list[tuple[int, int] | None] = []
    for graph in _messages(buffer, 0, len(buffer), _GRAPH):
        spans += _graph_raw_spans(buffer, *graph)
    return spans


def initializer_data_types(buffer: bytes) -> list[int]:
    """TensorProto.data_type of each initializer (0 when absent), in the order the parsed model lists them."""
    types: list[int] = []
    for graph in _messages(buffer, 0, len(buffer), _GRAPH):
        for tensor in _messages(buffer, *graph, _INITIALIZER):
            found = 0
            for number, wire, _, value, _ in _fields(buffer, *tensor):
                if number == _DATA_TYPE and wire == 0:
                    found = _varint(buffer, value)[0]
            types.append(found)
    return types


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


def without_raw_data(buffer: bytes, dropped: set[int]) -> bytes:
    """The model's bytes with the raw_data of the initializers at positions `dropped` (in the order
    initializer_raw_spans lists them) left out; every other field kept byte for byte. A model with more than
    one graph field (which parsing would merge) is refused with ValueError."""
    graphs = [field for field in _fields(buffer, 0, len(buffer)) if field[0] == _GRAPH and field[1] == 2]
    if len(graphs) > 1:
        raise ValueError("more than one graph field")
    parts: list[bytes] = []
    for number, wire, head, value, stop in _fields(buffer, 0, len(buffer)):
        if number == _GRAPH and wire == 2:
            parts += length_delimited(_GRAPH, _graph_without_raw(buffer, value, stop, dropped))
        else:
            parts.append(buffer[head:stop])
    return b"".join(parts)


def _graph_without_raw(buffer: bytes, start: int, end: int, dropped: set[int]) -> list[bytes]:
    parts: list[bytes] = []
    position = 0
    for number, wire, head, value, stop in _fields(buffer, start, end):
        if number == _INITIALIZER and wire == 2:
            if position in dropped:
                kept = [buffer[h:e] for n, _, h, _, e in _fields(buffer, value, stop) if n != _RAW_DATA]
                parts += length_delimited(_INITIALIZER, kept)
            else:
                parts.append(buffer[head:stop])
            position += 1
        else:
            parts.append(buffer[head:stop])
    return parts
