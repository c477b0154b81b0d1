"""Fuzz campaign (not a unit test): hostile and damaged checkpoints through ``inspect_checkpoint``.

Run from the repository root: ``python benchmarks/fuzz_inspect.py [--inputs 480] [--seed 11] [--json] [-v]``.
Seeded and bounded: the same seed gives the same inputs. It builds real checkpoints (every tensor name and shape
of SD1.5 and SDXL, tests/ckpt_factory.real_checkpoint_tensors) as safetensors and as torch.save zip files,
mutates them (truncation, bit flips, huge lengths, deep nesting, opcode floods, zip bombs, non-UTF-8, duplicate
keys, wrong types, and each limit at and just over its value), plus hostile sidecar YAML files, and runs each
input once timed and once under tracemalloc. It prints the inputs tried, the outcome by mutation (a result, a
clean error, a limit hit), the largest memory (tracemalloc peak per input, and the process's RSS high-water
mark over its baseline) and the longest time. Every input must end in a result or a clean error: an exception
out of ``inspect_checkpoint`` is counted as a crash, an input running past ``--hang-seconds`` aborts the run
(faulthandler prints where), a segfault kills it. Exit status 1 on any crash. ``tests/test_hostile_files.py``
runs it in CI and checks the bounds.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import itertools
import json
import os
import pickle
import pickletools
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
import zipfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ckpt_factory import real_checkpoint_tensors, save_torch_checkpoint, write_safetensors  # noqa: E402

from vpred_core.checkpoints import MAX_TENSORS  # noqa: E402
from vpred_core.checkpoints import safetensors_header as st  # noqa: E402
from vpred_core.checkpoints import torch_pickle as tp  # noqa: E402
from vpred_core.checkpoints.inspection import MAX_YAML_BYTES, STATUS_OK, inspect_checkpoint  # noqa: E402
from vpred_core.checkpoints.sidecar_yaml import write_yaml_for_checkpoint  # noqa: E402

MEMORY_LIMIT_BYTES = 64 * 2**20  # the budget per inspected file (vpred_core/checkpoints/__init__.py)
TIME_LIMIT_SECONDS = 0.5
DEFAULT_INPUTS = 3 * 51  # three rounds of the 51 mutations
MIB = 2**20
PROTO2 = b"\x80\x02"
SIDE_CAR_BASE = "sd15"


@dataclass
class Input:
    family: str  # safetensors / torch zip / sidecar yaml
    mutation: str
    data: bytes
    suffix: str
    sidecar: bytes | None = None
    file_size: int | None = None  # sparse size for safetensors (data region not materialised)
    fifo: str | None = None  # "checkpoint" or "sidecar": a named pipe instead of that file (POSIX)


# ---------------------------------------------------------------------------------------------------- bases
def build_bases(folder: Path) -> dict:
    """Real files to mutate: safetensors headers (file size kept sparse) and torch zip checkpoints."""
    bases = {}
    for kind in ("sd15", "sdxl"):
        tensors = real_checkpoint_tensors(kind)
        tensors["v_pred"] = ("F32", [0])
        path = write_safetensors(folder / f"{kind}.safetensors", tensors, {
            "modelspec.prediction_type": "v", "ss_zero_terminal_snr": "true",
            "ss_tag_frequency": json.dumps({"dir": {f"tag {i}": i for i in range(200)}})})
        with open(path, "rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            header = handle.read(length)
        bases[f"st_{kind}"] = (header, os.path.getsize(path))
        zpath = save_torch_checkpoint(folder / f"{kind}.ckpt", tensors)
        bases[f"zip_{kind}"] = zpath.read_bytes()
        bases[f"pkl_{kind}"] = tp.read_pickle_member(str(zpath))
    return bases


def alternate(*options):
    """The options in turn, one per call: at the limit, then just over it (a random pick could miss one)."""
    cycle = itertools.cycle(options)
    return lambda: next(cycle)


def safetensors_bytes(header: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header


def zip_with(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def torch_zip(pickle_bytes: bytes, method: int = zipfile.ZIP_STORED) -> bytes:
    return zip_with({"archive/data.pkl": pickle_bytes, "archive/version": b"3\n"}, method)


def deflated_flood(size: int, chunk: bytes = b"(}" * 2**19) -> bytes:
    """A torch zip whose deflated data.pkl is ``size`` bytes of MARK/EMPTY_DICT, written in chunks (never whole)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as member:
            member.write(PROTO2)
            left = size - len(PROTO2)
            while left > 0:
                member.write(chunk[:left])
                left -= len(chunk)
    return buffer.getvalue()


def reference_figures(folder: Path) -> list[tuple[str, str, int, str, int]]:
    """What real checkpoints measure against each limit: (file, quantity, measured, limit name, limit value).
    Counted with the standard library (json's bytes, pickletools.genops), independently of the readers."""
    rows = []
    for kind, ema in (("sd15", False), ("sd15", True), ("sdxl", False)):
        name = kind + ("+ema" if ema else "")
        tensors = real_checkpoint_tensors(kind, ema)
        path = write_safetensors(folder / f"ref_{name}.safetensors", tensors)
        with open(path, "rb") as handle:
            header = handle.read(8 + struct.unpack("<Q", handle.read(8))[0])[8:]
        rows += [(name, "tensors", len(tensors), "MAX_TENSORS", MAX_TENSORS),
                 (name, "safetensors header bytes", len(header), "MAX_HEADER_BYTES", st.MAX_HEADER_BYTES),
                 (name, "JSON objects + arrays", header.count(b"{") + header.count(b"["), "MAX_JSON_CONTAINERS",
                  st.MAX_JSON_CONTAINERS),
                 (name, "JSON ':' + ','", header.count(b":") + header.count(b","), "MAX_JSON_SEPARATORS",
                  st.MAX_JSON_SEPARATORS)]
        zpath = save_torch_checkpoint(folder / f"ref_{name}.ckpt", tensors)
        with zipfile.ZipFile(zpath) as archive:
            members = archive.infolist()
        with open(zpath, "rb") as handle:
            handle.seek(-22, os.SEEK_END)
            directory = struct.unpack("<L", handle.read(22)[12:16])[0]
        data = tp.read_pickle_member(str(zpath))
        ops = Counter()
        depth = max_depth = 0
        for opcode, _, _ in pickletools.genops(data):
            ops[opcode.name] += 1
            depth += opcode.name == "MARK"
            depth -= opcode.name in ("TUPLE", "LIST", "DICT", "SETITEMS", "APPENDS", "POP_MARK")
            max_depth = max(max_depth, depth)
        memo = sum(ops[op] for op in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"))
        rows += [(name, "zip members", len(members), "MAX_ZIP_MEMBERS", tp.MAX_ZIP_MEMBERS),
                 (name, "zip central directory bytes", directory, "MAX_ZIP_DIRECTORY_BYTES",
                  tp.MAX_ZIP_DIRECTORY_BYTES),
                 (name, "data.pkl bytes", len(data), "MAX_PICKLE_BYTES", tp.MAX_PICKLE_BYTES),
                 (name, "opcodes", sum(ops.values()), "MAX_OPCODES", tp.MAX_OPCODES),
                 (name, "lists, tuples, dicts built", sum(ops[op] for op in CONTAINER_OPCODES), "MAX_CONTAINERS",
                  tp.MAX_CONTAINERS),
                 (name, "memo puts", memo, "MAX_MEMO", tp.MAX_MEMO),
                 (name, "MARK nesting", max_depth, "MAX_MARK_DEPTH", tp.MAX_MARK_DEPTH),
                 (name, "GLOBAL opcodes", ops["GLOBAL"] + ops["STACK_GLOBAL"], "MAX_GLOBALS", tp.MAX_GLOBALS),
                 (name, "text opcodes", sum(ops[op] for op in TEXT_OPCODES), "MAX_TEXT_OPS", tp.MAX_TEXT_OPS),
                 (name, "data.pkl deflate ratio (re-zipped)", round(len(data) / len(zlib.compress(data, 9)), 1),
                  "MAX_COMPRESSION_RATIO", tp.MAX_COMPRESSION_RATIO)]
        tensors["v_pred"] = ("F32", [0])
        outcome = write_yaml_for_checkpoint(write_safetensors(folder / f"yaml_{name}.safetensors", tensors))
        rows.append((name, "our sidecar YAML bytes", os.path.getsize(outcome.yaml_path), "MAX_YAML_BYTES",
                     MAX_YAML_BYTES))
    return rows


CONTAINER_OPCODES = ("EMPTY_DICT", "EMPTY_LIST", "LIST", "DICT", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3")
REFERENCE_FIELDS = ("file", "quantity", "measured", "limit", "value")
TEXT_OPCODES = ("INT", "LONG", "FLOAT", "STRING", "UNICODE", "GET", "PUT", "PERSID", "GLOBAL")


# ------------------------------------------------------------------------------------------- safetensors
def st_input(mutation: str, header: bytes, file_size: int, length: int | None = None) -> Input:
    data = safetensors_bytes(header, length)
    return Input("safetensors", mutation, data, ".safetensors", file_size=max(file_size, len(data)))


def _entries_json(count: int, start: int = 0) -> bytes:
    return b",".join(b'"t%d":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}' % i
                     for i in range(start, start + count))


def st_mutations(rng: random.Random, bases: dict) -> list:
    containers_over, separators_over, tensors_over = (alternate(0, 1) for _ in range(3))
    header_over = alternate(0, 0, 1)  # with the three metadata texts: each text is parsed at the limit once
    metadata_text = alternate(b"a", "\U0001F600".encode(), "\u00e9".encode())  # a str of 1, 4 (UCS-4) or 2 bytes/char

    def base():
        return bases[rng.choice(["st_sd15", "st_sdxl"])]

    def truncated():
        header, size = base()
        data = safetensors_bytes(header)
        cut = rng.randrange(len(data))
        return Input("safetensors", "truncated", data[:cut], ".safetensors", file_size=cut)

    def bit_flips():
        header, size = base()
        raw = bytearray(header)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return st_input("bit flips", bytes(raw), size)

    def huge_length():
        header, size = base()
        length = rng.choice([2**64 - 1, 2**63, st.MAX_HEADER_BYTES + 1, size, len(header) + rng.randint(1, 64),
                             rng.randrange(2**64)])
        return st_input("huge or wrong length", header, size, length)

    def deep_nesting():
        depth = rng.choice([100, 999, 1001, 5000, 60_000])
        opener = rng.choice([b"[", b'{"a":'])
        closer = b"]" if opener == b"[" else b"}"
        return st_input("deep nesting", b'{"x":' + opener * depth + b"1" + closer * depth + b"}", 1 << 20)

    def container_flood():
        count = st.MAX_JSON_CONTAINERS - 2 + containers_over()  # + the object and the list around them
        item = rng.choice([b"[]", b"{}"])
        return st_input("container flood (MAX_JSON_CONTAINERS)",
                        b'{"x":[' + b",".join([item] * count) + b"]}", 1 << 20)

    def separator_flood():
        count = st.MAX_JSON_SEPARATORS + separators_over()  # count - 1 commas and one colon
        item = rng.choice([b'"ab"', b"1e0", b"1000", b"0"])
        return st_input("separator flood (MAX_JSON_SEPARATORS)",
                        b'{"x":[' + b",".join([item] * count) + b"]}", 1 << 20)

    def tensor_flood():
        count = MAX_TENSORS + tensors_over()
        return st_input("tensor flood (MAX_TENSORS)", b"{" + _entries_json(count) + b"}", 4 << 20)

    def metadata_at_size_cap():
        size = st.MAX_HEADER_BYTES - 64 + 100 * header_over()
        text = metadata_text()
        value = (text * (size // len(text)))[:size - 40]
        return st_input("metadata at MAX_HEADER_BYTES", b'{"__metadata__":{"k":"' + value + b'"}}', 8 << 20)

    def non_utf8():
        header, size = base()
        raw = bytearray(header)
        at = rng.randrange(1, len(raw) - 1)
        raw[at:at] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return st_input("non-UTF-8", bytes(raw), size)

    def duplicate_keys():
        header, size = base()
        doc_end = header.rstrip(b" ").rfind(b"}")
        first = header.index(b'"model.')
        entry_end = header.index(b"}", first) + 1
        entry = header[first:entry_end]
        choice = rng.randrange(4)
        if choice == 0:  # a whole tensor twice
            raw = header[:doc_end] + b"," + entry + header[doc_end:]
        elif choice == 1:  # a field twice inside an entry
            raw = header.replace(b'{"dtype":"F16",', b'{"dtype":"F16","dtype":"F32",', 1)
        elif choice == 2:  # a metadata key twice
            raw = header.replace(b'"__metadata__":{', b'"__metadata__":{"k":"1","k":"2",', 1)
        else:  # duplicate hidden by a \u escape of its colon
            raw = header.replace(b'"__metadata__":{', b'"__metadata__":{"k:":"1","k\\u003a":"2",', 1)
        return st_input("duplicate keys", raw, size)

    def wrong_types():
        header, size = base()
        swaps = [(b'"dtype":"F16"', b'"dtype":16'), (b'"dtype":"F16"', b'"dtype":"F99"'),
                 (b'"shape":[', b'"shape":[-1,'), (b'"shape":[', b'"shape":[true,'), (b'"shape":[', b'"shape":[1.5,'),
                 (b'"shape":[', b'"shape":[null,'), (b'"data_offsets":[', b'"data_offsets":[9,'),
                 (b'"data_offsets":[', b'"data_offsets":["0",'), (b'"shape":[', b'"shape":[18446744073709551616,'),
                 (b'"ss_zero_terminal_snr":"true"', b'"ss_zero_terminal_snr":true'),
                 (b'"__metadata__":{', b'"__metadata__":{"n":{"a":1},'), (b'"data_offsets":[', b'"data_offsets":[0,0,')]
        old, new = rng.choice(swaps)
        return st_input("wrong types", header.replace(old, new, rng.choice([1, 50])), size)

    def huge_numbers():
        header, size = base()
        digits = rng.choice([20, 400, 4299, 4301, 100_000])
        raw = header.replace(b'"shape":[', b'"shape":[' + b"9" * digits + b",", 1)
        if rng.random() < 0.5:
            raw = header.replace(b'"shape":[', b'"shape":[1e' + b"9" * min(digits, 50) + b",", 1)
        return st_input("huge numbers", raw, size)

    def odd_framing():
        header, size = base()
        raw = rng.choice([b"\xef\xbb\xbf" + header, b" " + header, header + b"garbage", header[:-1] + b"\x00",
                          b"[" + header[1:], b"{}", b'{"__metadata__":{}}', header.replace(b"{", b"{ \n\t", 3)])
        return st_input("odd framing", raw, size)

    return [truncated, bit_flips, huge_length, deep_nesting, container_flood, separator_flood, tensor_flood,
            metadata_at_size_cap, non_utf8, duplicate_keys, wrong_types, huge_numbers, odd_framing]


# --------------------------------------------------------------------------------------------- torch zip
def zip_input(mutation: str, data: bytes) -> Input:
    return Input("torch zip", mutation, data, rng_suffix(data))


def rng_suffix(data: bytes) -> str:
    return (".ckpt", ".pt", ".pth", ".bin")[len(data) % 4]


FLOODS = {  # opcode flood unit (after PROTO 2), as counted against MAX_OPCODES
    "NONE": b"N", "EMPTY_DICT": b"}", "EMPTY_LIST": b"]", "MARK+TUPLE": b"(t", "DUP": b"2",
    "SHORT_BINUNICODE": b"\x8c\x02ab", "BININT2": b"M\xff\xff", "BINFLOAT": b"G" + struct.pack(">d", 1.5),
    "BINPERSID": b"NQ", "NEWOBJ": b"NN\x81", "SHORT_BINBYTES": b"C\x02ab", "APPEND": b"Na",
    "EMPTY_DICT+SETITEMS": b"}(u",
}


def zip_mutations(rng: random.Random, bases: dict, marker: Path) -> list:
    marks_over, memo_over, globals_over = alternate(0, 1), alternate(0, 1), alternate(0, 1)
    bomb_lies, record_lies = alternate(False, True), alternate(True, False)
    members_over = alternate(-8, 1)
    def pkl():
        return bases[rng.choice(["pkl_sd15", "pkl_sdxl"])]

    def truncated_zip():
        data = bases[rng.choice(["zip_sd15", "zip_sdxl"])]
        return zip_input("zip truncated", data[:rng.randrange(len(data))])

    def zip_bit_flips():
        data = bytearray(bases[rng.choice(["zip_sd15", "zip_sdxl"])])
        low = len(data) - 4096 if rng.random() < 0.5 else 0  # the end record and directory tail, or anywhere
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(low, len(data))] ^= 1 << rng.randrange(8)
        return zip_input("zip bit flips", bytes(data))

    def pickle_bit_flips():
        data = bytearray(pkl())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return zip_input("pickle bit flips", torch_zip(bytes(data)))

    def pickle_truncated():
        data = pkl()
        return zip_input("pickle truncated", torch_zip(data[:rng.randrange(len(data))]))

    def opcode_flood(name: str):
        def flood():
            unit = FLOODS[name]
            count = min(tp.MAX_OPCODES + rng.choice([-4, 4]), (tp.MAX_PICKLE_BYTES - 8) // len(unit))
            prefix = {"DUP": b"N", "APPEND": b"]"}.get(name, b"")
            return zip_input(f"opcode flood {name} (MAX_OPCODES)", torch_zip(PROTO2 + prefix + unit * count + b"."))
        return flood

    def deep_nesting():
        depth = rng.choice([1000, 100_000, tp.MAX_OPCODES - 10])
        choice = rng.randrange(3)
        if choice == 0:  # a tuple nested `depth` deep used as a dict key: hashing it would recurse in C
            data = PROTO2 + b"}K\x01" + b"\x85" * depth + b"Ns."
        elif choice == 1:  # lists nested by APPEND
            data = PROTO2 + b"]" + b"]" * depth + b"a" * depth + b"."
        else:  # MARK nesting
            data = PROTO2 + b"(" * min(depth, tp.MAX_MARK_DEPTH + marks_over()) + b"N."
        return zip_input("deep nesting", torch_zip(data))

    def memo_flood():
        count = tp.MAX_MEMO + memo_over()
        data = PROTO2 + b"N" + b"".join(b"r" + struct.pack("<I", i) for i in range(count)) + b"."
        return zip_input("memo flood (MAX_MEMO)", torch_zip(data))

    def zip_bomb():
        size = rng.choice([tp.MAX_PICKLE_BYTES - 16, tp.MAX_PICKLE_BYTES + 1, 16 * 2**20])
        data = deflated_flood(size)
        if bomb_lies():  # the directory states a small size: reading stops there (and the CRC fails)
            data = bytearray(data)
            at = data.find(b"PK\x01\x02") + 24  # data.pkl's entry: uncompressed size
            struct.pack_into("<L", data, at, rng.choice([100, tp.MAX_PICKLE_BYTES - 1]))
            return zip_input("zip bomb (sizes lie)", bytes(data))
        return zip_input("zip bomb (MAX_PICKLE_BYTES, MAX_COMPRESSION_RATIO)", data)

    def member_flood():
        if record_lies():  # an end record announcing far more members than the file can hold
            data = bytearray(torch_zip(pkl()))
            at = data.rfind(b"PK\x05\x06")
            struct.pack_into("<HHLL", data, at + 8, 0xFFFE, 0xFFFE, 0xFFFFFFF0, 0)
            return zip_input("zip end record lies", bytes(data))
        count = tp.MAX_ZIP_MEMBERS + members_over()
        members = {f"archive/data/{i}": b"" for i in range(count)}
        members["archive/data.pkl"] = pkl()
        return zip_input("zip member flood (MAX_ZIP_MEMBERS)", zip_with(members))

    def zip64_lies():
        data = bytearray(torch_zip(pkl()))
        at = data.rfind(b"PK\x05\x06")
        record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 2**40, 2**40, 2**50, 0)
        locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
        end = bytearray(data[at:])
        struct.pack_into("<HHLL", end, 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        return zip_input("zip64 record lies", bytes(data[:at]) + record + locator + bytes(end))

    def wrong_members():
        choice = rng.randrange(4)
        if choice == 0:
            data = zip_with({"a/data.pkl": pkl(), "b/data.pkl": pkl()})
        elif choice == 1:
            data = zip_with({"archive/version": b"3"})
        elif choice == 2:
            data = torch_zip(pkl(), zipfile.ZIP_BZIP2)
        else:
            data = torch_zip(pkl(), zipfile.ZIP_DEFLATED)  # re-zipped: deflated, still listed
        return zip_input("zip members", data)

    def not_a_zip():
        choice = rng.randrange(3)
        if choice == 0:
            data = pkl()  # a bare pickle (legacy-like)
        elif choice == 1:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4096)))
        else:
            data = b"PK\x05\x06" + b"\0" * 18
        return zip_input("not a zip", data)

    def malicious():
        class Pwn:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        payload = pickle.dumps({"state_dict": {"model.diffusion_model.x": Pwn()}}, protocol=rng.choice([0, 2, 4]))
        return zip_input("malicious pickle", torch_zip(payload))

    def wrong_types():
        choice = rng.randrange(4)
        if choice == 0:  # state dict is a list
            data = PROTO2 + b"}X\x0a\x00\x00\x00state_dict]Ns."
        elif choice == 1:  # sizes are floats / negative / huge
            size = rng.choice([b"G" + struct.pack(">d", 1.5), b"J\xff\xff\xff\xff", b"\x8b\x00\x00\x10\x00"
                               + b"\x01" * 0x100000 + b""])
            data = (PROTO2 + b"}X\x01\x00\x00\x00a" + b"ctorch._utils\n_rebuild_tensor_v2\n(NK\x00" + size
                    + b"\x85)tRs.")
        elif choice == 2:  # keys that are not strings
            data = PROTO2 + b"}" + b"".join(b"J" + struct.pack("<i", i) + b"N" + b"s" for i in range(1000)) + b"."
        else:
            data = PROTO2 + b"}(" + b"X\x01\x00\x00\x00aN" * 3 + b"X\x01\x00\x00\x00a" + b"u."  # odd SETITEMS
        return zip_input("wrong types", torch_zip(data))

    def huge_lengths():
        op = rng.choice([b"X" + struct.pack("<I", 2**32 - 1), b"\x8d" + struct.pack("<Q", 2**63),
                         b"\x8e" + struct.pack("<Q", 2**64 - 1), b"\x8b" + struct.pack("<i", 2**31 - 1),
                         b"T" + struct.pack("<i", -5), b"\x8a\xff"])
        return zip_input("huge lengths", torch_zip(PROTO2 + op + b"abc."))

    def non_utf8():
        data = PROTO2 + b"}X\x04\x00\x00\x00\xff\xfe\xfd\xfcNs."
        if rng.random() < 0.5:
            data = PROTO2 + b"}X\x03\x00\x00\x00\xed\xa0\x80Ns."  # a lone surrogate: allowed as pickle allows it
        return zip_input("non-UTF-8", torch_zip(data))

    def duplicate_keys():  # legal in a pickle: the last value wins, as when unpickling
        key = b"X\x16\x00\x00\x00model.diffusion_model.x"
        tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(NK\x00K\x04K\x04\x86)tR"
        return zip_input("duplicate keys", torch_zip(PROTO2 + b"}(" + key + tensor + key + b"N" + b"u."))

    def text_opcodes():
        names = [f"model.diffusion_model.block.{i}.weight" for i in range(rng.choice([100, tp.MAX_TEXT_OPS]))]
        payload = pickle.dumps({"state_dict": dict.fromkeys(names, 1.5)}, protocol=0)
        return zip_input("protocol-0 text opcodes (MAX_TEXT_OPS)", torch_zip(payload))

    def global_flood():
        count = tp.MAX_GLOBALS + globals_over()
        data = PROTO2 + b"".join(b"cmod%d\nname\n0" % i for i in range(count)) + b"N."
        return zip_input("global flood (MAX_GLOBALS)", torch_zip(data))

    return [truncated_zip, zip_bit_flips, pickle_bit_flips, pickle_truncated, *map(opcode_flood, FLOODS), deep_nesting,
            memo_flood, zip_bomb, member_flood, zip64_lies, wrong_members, not_a_zip, malicious, wrong_types,
            huge_lengths, non_utf8, duplicate_keys, text_opcodes, global_flood]


# ------------------------------------------------------------------------------------------ sidecar YAML
def yaml_mutations(rng: random.Random, bases: dict) -> list:
    header, size = bases[f"st_{SIDE_CAR_BASE}"]
    data = safetensors_bytes(header)

    def sidecar(mutation: str, text: bytes) -> Input:
        return Input("sidecar yaml", mutation, data, ".safetensors", sidecar=text, file_size=size)

    def flood():
        cap = MAX_YAML_BYTES - 16 + rng.choice([0, 64])
        unit = rng.choice([b"[],", b"{},", b"a,", b"&a x,"])
        return sidecar("flow flood (MAX_YAML_BYTES)", b"a: [" + (unit * (cap // len(unit)))[:cap - 8] + b"]\n")

    def nesting():
        depth = rng.choice([500, 1001, 10_000])
        return sidecar("deep nesting", b"a: " + b"[" * depth + b"]" * depth + b"\n")

    def non_utf8():
        return sidecar("non-UTF-8", b"model:\n  params:\n    parameterization: \xff\xfe\n")

    def wrong_types():
        text = rng.choice([b"model: [1, 2]\n", b"- 1\n- 2\n", b"model:\n  params:\n    linear_start: " + b"9" * 400
                           + b"\n", b"model:\n  params:\n    linear_end: .nan\n", b"vpred_toolkit: {ztsnr: [1]}\n",
                           b"model:\n  params:\n    denoiser_config: {params: {scaling_config: {target: 5}}}\n"])
        return sidecar("wrong types", text)

    def anchors():
        lines = [b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [b"a%d: &a%d [" % (i, i) + b", ".join([b"*a%d" % (i - 1)] * 10) + b"]" for i in range(1, 40)]
        return sidecar("alias bomb", b"\n".join(lines) + b"\n")

    def pipe_checkpoint():
        suffix = rng.choice([".safetensors", ".ckpt"])
        return Input("special files", "named pipe as the checkpoint", data, suffix, file_size=size, fifo="checkpoint")

    def pipe_sidecar():
        return Input("special files", "named pipe as the sidecar YAML", data, ".safetensors", file_size=size,
                     fifo="sidecar")

    return [flood, nesting, non_utf8, wrong_types, anchors, pipe_checkpoint, pipe_sidecar]


# ------------------------------------------------------------------------------------------------ runner
def write_input(folder: Path, index: int, item: Input) -> str:
    path = folder / f"input_{index:04d}{item.suffix}"
    fifo = item.fifo if hasattr(os, "mkfifo") else None
    if fifo == "checkpoint":
        os.mkfifo(path)  # opening it to read would wait for a writer forever
    else:
        with open(path, "wb") as handle:
            handle.write(item.data)
            if item.file_size is not None and item.file_size > len(item.data):
                handle.truncate(item.file_size)  # sparse: the data region the offsets point into
    if fifo == "sidecar":
        os.mkfifo(path.with_suffix(".yaml"))
    elif item.sidecar is not None:
        path.with_suffix(".yaml").write_bytes(item.sidecar)
    return str(path)


def classify(result) -> str:
    if result.status == STATUS_OK:
        return "result"
    text = result.error or ""
    if "(MAX_" in text:
        return "limit " + text[text.index("(MAX_") + 1:].split(")")[0].split(";")[0]
    return "clean error"


def inputs(count: int, seed: int, bases: dict, marker: Path):
    """The campaign's inputs, the same for the same seed: (index, label, Input)."""
    rng = random.Random(seed)
    makers = (st_mutations(rng, bases) + zip_mutations(rng, bases, marker) + yaml_mutations(rng, bases))
    for index in range(count):
        item = makers[index % len(makers)]()
        yield index, f"{item.family}: {item.mutation}", item


def rss_high_water() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


RSS_CHILD = """
import resource, sys
sys.path[:0] = {paths!r}
from vpred_core.checkpoints.inspection import inspect_checkpoint


def status(key):  # kB, Linux
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key))


inspect_checkpoint({warm!r})
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak (VmHWM) to the current RSS
    before = status("VmRSS:")
    inspect_checkpoint({path!r})
    print((status("VmHWM:") - before) * 1024)
except OSError:  # not Linux: the high-water mark since start (a lower bound when imports peaked higher)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inspect_checkpoint({path!r})
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * (1 if sys.platform == "darwin" else 1024))
"""


def rss_in_child(path: str, warm: str) -> int:
    """Peak RSS growth of one inspection in a fresh interpreter (imports and a first inspection done before)."""
    code = RSS_CHILD.format(paths=[str(ROOT), str(ROOT / "tests")], warm=warm, path=path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.split()[-1])


def campaign(count: int, seed: int, hang_seconds: float, rss_top: int, verbose: bool) -> dict:
    """Pass 1: every input timed (wall and CPU). Pass 2: the same inputs again under tracemalloc (peak). Pass 3:
    the ``rss_top`` largest by tracemalloc peak once more, each in a fresh process measuring its RSS growth."""
    folder = Path(tempfile.mkdtemp(prefix="vpred_fuzz_"))
    marker = folder / "pwned"
    outcomes: dict = defaultdict(Counter)
    crashes: list[str] = []
    per_label: dict = defaultdict(lambda: {"cpu": 0.0, "wall": 0.0, "peak": 0})
    peaks: list[tuple[int, int, str]] = []
    started = time.perf_counter()
    try:
        bases = build_bases(folder)
        reference = reference_figures(folder)
        warm = str(folder / "sdxl.safetensors")
        inspect_checkpoint(warm)  # imports and caches
        work = folder / "inputs"
        for traced in (False, True):
            for index, label, item in inputs(count, seed, bases, marker):
                work.mkdir(exist_ok=True)
                path = write_input(work, index, item)
                del item
                if verbose:
                    print(f"[{index}{' traced' if traced else ''}] {label}", file=sys.stderr, flush=True)
                faulthandler.dump_traceback_later(hang_seconds, exit=True)
                try:
                    if traced:
                        tracemalloc.start()
                        inspect_checkpoint(path)
                        peak = tracemalloc.get_traced_memory()[1]
                        tracemalloc.stop()
                        per_label[label]["peak"] = max(per_label[label]["peak"], peak)
                        peaks.append((peak, index, label))
                    else:
                        wall, cpu = time.perf_counter(), time.process_time()
                        result = inspect_checkpoint(path)
                        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                        outcomes[label][classify(result)] += 1
                        per_label[label]["cpu"] = max(per_label[label]["cpu"], cpu)
                        per_label[label]["wall"] = max(per_label[label]["wall"], wall)
                except Exception:  # noqa: BLE001 - the point: anything escaping inspect_checkpoint is a crash
                    tracemalloc.stop()
                    if not traced:
                        outcomes[label]["CRASH"] += 1
                        crashes.append(f"{label}: {traceback.format_exc(limit=4)}")
                finally:
                    faulthandler.cancel_dump_traceback_later()
                shutil.rmtree(work)
        rss = []
        wanted = {index for _, index, _ in sorted(peaks, reverse=True)[:rss_top]}
        for index, label, item in inputs(count, seed, bases, marker):
            if index in wanted:
                work.mkdir(exist_ok=True)
                rss.append((rss_in_child(write_input(work, index, item), warm), label))
                shutil.rmtree(work)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    worst = {key: max(((values[key], label) for label, values in per_label.items()), default=(0, ""))
             for key in ("cpu", "wall", "peak")}
    worst_rss = max(rss, default=(None, ""))
    return {
        "seed": seed, "inputs": count, "seconds": round(time.perf_counter() - started, 1),
        "reference": [dict(zip(REFERENCE_FIELDS, row, strict=True)) for row in reference],
        "outcomes": {label: dict(counts) for label, counts in sorted(outcomes.items())},
        "per_mutation": {label: dict(values) for label, values in sorted(per_label.items())},
        "crashes": crashes, "code_ran": marker.exists(),
        "max_tracemalloc_peak_bytes": worst["peak"][0], "max_peak_input": worst["peak"][1],
        "max_wall_seconds": round(worst["wall"][0], 4), "max_wall_input": worst["wall"][1],
        "max_cpu_seconds": round(worst["cpu"][0], 4), "max_cpu_input": worst["cpu"][1],
        "max_rss_delta_bytes": worst_rss[0], "max_rss_input": worst_rss[1],
        "rss_measured_inputs": len(rss),
    }


def print_report(summary: dict) -> None:
    print("real checkpoints against the limits (the largest of SD1.5, SD1.5 with EMA, SDXL):")
    largest: dict = {}
    for row in summary["reference"]:
        if row["limit"] not in largest or row["measured"] > largest[row["limit"]]["measured"]:
            largest[row["limit"]] = row
    for limit, row in largest.items():
        margin = f"{row['value'] / row['measured']:.1f}x" if row["measured"] else "-"
        print(f"  {limit:24s} {row['value']:>10,}   {row['file']:8s} {row['quantity']:34s} {row['measured']:>9,}  "
              f"margin {margin}")
    families = Counter()
    for label, counts in summary["outcomes"].items():
        families[label.split(":")[0]] += sum(counts.values())
    print(f"fuzz_inspect: seed {summary['seed']}, {summary['inputs']} inputs "
          f"({', '.join(f'{name} {n}' for name, n in sorted(families.items()))}) in {summary['seconds']} s")
    print(f"  {'mutation':58s} {'inputs':>6s} {'max CPU':>8s} {'max wall':>9s} {'peak':>8s}  outcomes")
    for label, counts in summary["outcomes"].items():
        worst = summary["per_mutation"][label]
        text = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        print(f"  {label:58s} {sum(counts.values()):6d} {worst['cpu'] * 1e3:6.0f}ms {worst['wall'] * 1e3:7.0f}ms "
              f"{worst['peak'] / MIB:5.1f}MiB  {text}")
    totals: Counter = Counter()
    for counts in summary["outcomes"].values():
        for name, n in counts.items():
            totals["limit hit" if name.startswith("limit") else name] += n
    print("outcomes: " + ", ".join(f"{name} {n}" for name, n in sorted(totals.items())))
    print(f"max tracemalloc peak per input: {summary['max_tracemalloc_peak_bytes'] / MIB:.1f} MiB "
          f"({summary['max_peak_input']}); budget {MEMORY_LIMIT_BYTES / MIB:.0f} MiB")
    if summary["max_rss_delta_bytes"] is not None:
        print(f"max RSS growth, fresh process per input ({summary['rss_measured_inputs']} largest by peak): "
              f"{summary['max_rss_delta_bytes'] / MIB:.1f} MiB ({summary['max_rss_input']})")
    print(f"max time per input: {summary['max_cpu_seconds']:.3f} s CPU ({summary['max_cpu_input']}), "
          f"{summary['max_wall_seconds']:.3f} s wall ({summary['max_wall_input']}); budget {TIME_LIMIT_SECONDS} s")
    print(f"crashes: {len(summary['crashes'])}; pickled code ran: {summary['code_ran']}")
    for crash in summary["crashes"]:
        print(crash)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--hang-seconds", type=float, default=20.0, help="abort the run when one input takes longer")
    parser.add_argument("--rss-top", type=int, default=4, help="inputs re-run in a fresh process to measure RSS")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true", help="name each input on stderr before running it")
    args = parser.parse_args(argv)
    summary = campaign(args.inputs, args.seed, args.hang_seconds, args.rss_top, args.verbose)
    if args.json:
        print(json.dumps(summary))
    else:
        print_report(summary)
    return 1 if summary["crashes"] or summary["code_ran"] else 0


if __name__ == "__main__":
    sys.exit(main())
