#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/<target>/.

Python's standard library only (no numpy), and deterministic: running it
again gives the same bytes, so the committed corpus is its output. Each seed
is small; valid files show the fuzzer each format's structure and invalid
ones start it at the readers' error paths. It also writes the libFuzzer
dictionaries (<target>.dict) that scripts/fuzz passes with -dict.

The input of a fixed finding belongs in the corpus too, so that every
scripts/fuzz run replays it: copy it to corpus/<target>/regress-<what>; this
script leaves files it does not generate alone.

    tests/fuzz/make_corpus.py            # (re)write the generated seeds
    tests/fuzz/make_corpus.py --check    # exit 1 if a generated seed differs
"""

import gzip
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

# ---- .npy --------------------------------------------------------------------

FORMATS = {"<f8": "<d", "<f4": "<f", "<i8": "<q", "<i4": "<i", "<i2": "<h", "|i1": "<b",
           "|u1": "<B", "<u2": "<H", ">f8": ">d"}


def npy(descr, shape, values, version=(1, 0), fortran=False, header=None, pad_to=64):
    """A .npy file as numpy.save writes it (or with the header text given)."""
    if header is None:
        shape_text = "(" + "".join(f"{d}, " for d in shape).rstrip(" ")
        shape_text = shape_text.rstrip(",") + ("," if len(shape) == 1 else "") + ")"
        header = (f"{{'descr': '{descr}', 'fortran_order': {fortran}, "
                  f"'shape': {shape_text}, }}")
    length_size = 2 if version[0] == 1 else 4
    preamble = 6 + 2 + length_size
    text = header.encode("latin-1" if version[0] < 3 else "utf-8")
    padding = (pad_to - (preamble + len(text) + 1) % pad_to) % pad_to
    text += b" " * padding + b"\n"
    length = struct.pack("<H" if length_size == 2 else "<I", len(text))
    data = b"".join(struct.pack(FORMATS[descr], v) for v in values)
    return b"\x93NUMPY" + bytes(version) + length + text + data


def npy_seeds():
    floats = [0.5, -1.25, 3.0, 1e-300, -0.0, 2.5e10]
    labels = [0, 1, 2, 1, 0, 2]
    valid = {
        "f8_2x3.npy": npy("<f8", (2, 3), floats),
        "f4_5.npy": npy("<f4", (5,), floats[:5]),
        "i8_labels_6.npy": npy("<i8", (6,), labels),
        "i4_6x1.npy": npy("<i4", (6, 1), labels),
        "i2_2x2.npy": npy("<i2", (2, 2), [-3, 7, 300, 0]),
        "i1_4.npy": npy("|i1", (4,), [-128, 0, 1, 127]),
        "u1_2x3.npy": npy("|u1", (2, 3), [0, 1, 2, 255, 128, 7]),
        "u2_3.npy": npy("<u2", (3,), [0, 65535, 2]),
        "f8_0x3.npy": npy("<f8", (0, 3), []),
        "f8_1x1.npy": npy("<f8", (1, 1), [42.0]),
        "f8_v2.npy": npy("<f8", (2, 2), floats[:4], version=(2, 0)),
        "f8_v3.npy": npy("<f8", (3,), floats[:3], version=(3, 0)),
        "f8_nan_inf.npy": npy("<f8", (3,), [float("nan"), float("inf"), 1.0]),
        "f8_unpadded.npy": npy("<f8", (2,), [1.0, 2.0], pad_to=1),
        "f8_reordered.npy": npy("<f8", (2,), [1.0, 2.0],
                                header="{'shape': (2,), 'fortran_order': False, 'descr': '<f8'}"),
    }
    invalid = {
        "bad_fortran.npy": npy("<f8", (2, 2), floats[:4], fortran=True),
        "bad_big_endian.npy": npy(">f8", (2,), floats[:2]),
        "bad_3d.npy": npy("<f8", (1, 2, 2), floats[:4]),
        "bad_0d.npy": npy("<f8", (), floats[:1]),
        "bad_dtype_c16.npy": npy("<f8", (1,), [1.0], header="{'descr': '<c16', "
                                 "'fortran_order': False, 'shape': (1,), }"),
        "bad_truncated.npy": npy("<f8", (4,), floats[:4])[:-5],
        "bad_extra_bytes.npy": npy("<f8", (2,), floats[:2]) + b"\x00" * 3,
        "bad_huge_shape.npy": npy("<f8", (1 << 40, 1 << 40), []),
        "bad_negative_dim.npy": npy("<f8", (-1, 2), []),
        "bad_magic.npy": b"\x93NUMPZ\x01\x00" + npy("<f8", (1,), [1.0])[8:],
        "bad_version.npy": npy("<f8", (1,), [1.0], version=(9, 0)),
        "bad_header_length.npy": b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f8'",
        "bad_header_syntax.npy": npy("<f8", (1,), [1.0],
                                     header="{'descr': '<f8', 'fortran_order': Maybe, 'shape': (1,"),
        "bad_empty.npy": b"",
    }
    return {**valid, **invalid}


# ---- CSV ---------------------------------------------------------------------

def csv_seeds():
    return {
        "header_3col.csv": b"x1,x2,x3\n1,2,3\n4.5,-6,7e-3\n0,0,0\n",
        "no_header.csv": b"1,2\n3,4\n5,6\n",
        "one_column.csv": b"y\n0\n1\n2\n1\n",
        "labels.csv": b"2\n0\n1\n",
        "crlf.csv": b"a,b\r\n1,2\r\n3,4\r\n",
        "spaces_tabs.csv": b" 1 ,\t2\n3 , 4 \n",
        "plus_exponent.csv": b"+1.5,-2E+3\n.5,1.\n",
        "blank_lines.csv": b"1,2\n\n3,4\n\n",
        "no_final_newline.csv": b"1,2\n3,4",
        "bad_ragged.csv": b"1,2,3\n4,5\n",
        "bad_nan.csv": b"1,nan\n2,3\n",
        "bad_inf.csv": b"inf,1\n2,3\n",
        "bad_text_in_data.csv": b"a,b\n1,2\n3,x\n",
        "bad_trailing_comma.csv": b"1,2,\n3,4,\n",
        "bad_quoted.csv": b"\"a\",\"b\"\n\"1\",\"2\"\n",
        "bad_header_only.csv": b"a,b,c\n",
        "bad_empty.csv": b"",
        "bad_overflow.csv": b"1e999,2\n3,4\n",
        "bad_nul.csv": b"1,2\n3,\x004\n",
    }


# ---- IDX ---------------------------------------------------------------------

def idx(dims, data, type_code=0x08, magic=b"\x00\x00"):
    head = magic + bytes([type_code, len(dims)])
    return head + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


def idx_seeds():
    labels = idx((5,), [0, 9, 3, 3, 1])
    images = idx((2, 3, 3), range(18))
    matrix = idx((3, 4), [i * 20 for i in range(12)])
    return {
        "labels_5-idx1-ubyte": labels,
        "images_2x3x3-idx3-ubyte": images,
        "matrix_3x4-idx2-ubyte": matrix,
        "empty_0-idx1-ubyte": idx((0,), []),
        "labels_5-idx1-ubyte.gz": gzip.compress(labels, mtime=0),
        "images_2x3x3-idx3-ubyte.gz": gzip.compress(images, mtime=0),
        "bad_truncated-idx3-ubyte": images[:-4],
        "bad_extra-idx1-ubyte": labels + b"\x07",
        "bad_type_int32-idx1-ubyte": idx((2,), [0] * 8, type_code=0x0C),
        "bad_4d-idx4-ubyte": idx((1, 1, 1, 2), [1, 2]),
        "bad_magic-idx1-ubyte": idx((1,), [1], magic=b"\x01\x00"),
        "bad_huge_dims-idx3-ubyte": idx((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), []),
        "bad_short_dims-idx3-ubyte": idx((2,), [])[:6],
        "bad_truncated.gz": gzip.compress(images, mtime=0)[:-10],
        "bad_corrupt.gz": gzip.compress(labels, mtime=0)[:12] + b"\xff" * 8,
        "bad_empty": b"",
    }


# ---- The CLI's argv ------------------------------------------------------------
# Names refer to the fixtures fuzz_cli.cpp writes into its working directory.

CLI_SEEDS = {
    "help": ["--help"],
    "version": ["--version"],
    "profile_help": ["profile", "--help"],
    "sweep_help": ["sweep", "--help"],
    "no_command": [],
    "unknown_command": ["bogus"],
    "missing_value": ["profile", "--x"],
    "profile_mse": ["profile", "--x", "X.npy", "--y", "Y.npy", "--out", "r.json", "--curve",
                    "c.csv"],
    "profile_ce_hidden": ["profile", "--x", "X.npy", "--y", "labels.npy", "--loss", "ce",
                          "--hidden", "4", "--init", "zeros", "--curve", "c.csv",
                          "--batch-sizes", "pow2", "--curve-loss"],
    "profile_bce": ["profile", "--x", "X.npy", "--y", "T.npy", "--loss", "bce",
                    "--param-stats", "s.npy", "--no-bias", "--seed", "3"],
    "profile_shape": ["profile", "--x", "X.npy", "--y", "Y.npy", "--layer", "W.npy:b.npy",
                      "--spectrum", "2", "--theta", "0.5", "--tests-csv", "t.csv",
                      "--spectrum-csv", "sp.csv", "--estimators", "2,4,3", "--out", "r.json",
                      "--batch-sizes", "1,2,8"],
    "profile_deep_gn": ["profile", "--x", "X.npy", "--y", "Y.npy", "--layer", "W1.npy",
                        "--layer", "W2.npy", "--hessian", "gn", "--spectrum", "3",
                        "--exact-trace-sq"],
    "profile_csv_lstsq": ["profile", "--x", "X.csv", "--y", "Y.csv", "--init", "lstsq",
                          "--chunk-rows", "3", "--device", "cpu"],
    "profile_fashion": ["profile", "--dataset", "fashion-mnist", "--split", "test", "--limit",
                        "3", "--loss", "ce", "--out", "r.json"],
    "profile_bad_combination": ["profile", "--dataset", "fashion-mnist", "--x", "X.npy",
                                "--split", "val"],
    "profile_bad_chain": ["profile", "--x", "X.npy", "--y", "Y2.npy", "--layer", "W1.npy",
                          "--layer", "Wc.npy"],
    "profile_negative_seed": ["profile", "--x", "X.npy", "--y", "Y.npy", "--seed", "-1"],
    "profile_same_output": ["profile", "--x", "X.npy", "--y", "Y.npy", "--out", "o",
                            "--curve", "o"],
    "synth": ["synth", "--n", "10", "--d", "3", "--k", "2", "--spectrum", "powerlaw:1.5",
              "--label-noise", "0.1", "--seed", "7", "--mean", "2", "--x-out", "a.npy",
              "--y-out", "b.npy", "--teacher-out", "w.npy"],
    "synth_list_spectrum": ["synth", "--n", "5", "--d", "3", "--spectrum", "1,2,3",
                            "--x-out", "a.npy", "--y-out", "b.npy"],
    "synth_bad": ["synth", "--n", "0", "--d", "-2", "--x-out", "a.npy", "--y-out", "a.npy"],
    "sweep_mse": ["sweep", "--x", "X.npy", "--y", "Y.npy", "--batch-sizes", "1,4", "--lrs",
                  "0.1,0.01", "--steps", "5", "--out", "runs.csv", "--summary", "s.json",
                  "--final-weights", "w.npy"],
    "sweep_ce_test": ["sweep", "--x", "X.npy", "--y", "labels.npy", "--loss", "ce",
                      "--batch-sizes", "pow2", "--lrs", "0.3", "--steps", "4", "--sampling",
                      "without", "--momentum", "0.9", "--weight-decay", "0.01", "--log-every",
                      "1", "--summary", "s.json", "--test-x", "X.npy", "--test-y",
                      "labels.npy", "--threads", "1"],
    "sweep_resume": ["sweep", "--x", "X.npy", "--y", "Y.npy", "--batch-sizes", "2,4", "--lrs",
                     "0.1", "--replicas", "2", "--steps", "4", "--summary", "s.json",
                     "--checkpoint", "run.ckpt"],
    "sweep_resume_mismatch": ["sweep", "--x", "X.npy", "--y", "Y.npy", "--batch-sizes", "2",
                              "--lrs", "0.1", "--steps", "8", "--summary", "s.json",
                              "--checkpoint", "run.ckpt"],
    "sweep_junk_checkpoint": ["sweep", "--x", "X.npy", "--y", "Y.npy", "--batch-sizes", "2",
                              "--lrs", "0.1", "--steps", "2", "--out", "r.csv",
                              "--checkpoint", "junk.ckpt", "--checkpoint-every", "0"],
    "sweep_fashion": ["sweep", "--dataset", "fashion-mnist", "--eval-test", "--test-limit",
                      "2", "--loss", "ce", "--batch-sizes", "2", "--lrs", "0.1", "--steps",
                      "3", "--summary", "s.json", "--no-profile"],
    "sweep_diverge": ["sweep", "--x", "X.npy", "--y", "Y.npy", "--batch-sizes", "2", "--lrs",
                      "1e9", "--steps", "5", "--divergence-factor", "10", "--summary",
                      "s.json", "--sampling", "fixed", "--label-noise", "0.5",
                      "--first-replica", "3"],
}


def cli_seeds():
    return {name: "\0".join(args).encode() for name, args in CLI_SEEDS.items()}


# ---- Dictionaries (libFuzzer -dict): the formats' tokens -----------------------

def dict_text(tokens):
    def escape(token):
        return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else f"\\x{ord(c):02x}"
                       for c in token)
    return "".join(f'"{escape(t)}"\n' for t in tokens)


def dictionaries():
    npy_tokens = ["\x93NUMPY", "{'descr': ", "'fortran_order': ", "'shape': ", "True", "False",
                  "(", ",)", ", ", "}"] + [f"'{d}'" for d in FORMATS] + ["'<c16'", "'>i4'",
                                                                         "'=f8'"]
    csv_tokens = [",", "\n", "\r\n", "nan", "inf", "-inf", "e+308", "e-324", "+", "-", ".",
                  "0x1p3", "\"", "1.7976931348623157e308", "4.9e-324"]
    options = set()
    for args in CLI_SEEDS.values():
        options.update(a for a in args if a.startswith("--"))
    cli_tokens = sorted(options) + ["profile", "sweep", "synth", "fashion-mnist", "train", "test",
                                    "mse", "ce", "bce", "zeros", "gaussian", "lstsq", "auto",
                                    "cpu", "cuda", "with", "without", "fixed", "all", "pow2",
                                    "full", "gn", "identity", "powerlaw:", "X.npy", "Y.npy",
                                    "Y2.npy", "T.npy", "labels.npy", "W.npy", "b.npy", "W1.npy",
                                    "W2.npy", "Wc.npy", "X.csv", "Y.csv", "run.ckpt",
                                    "junk.ckpt", "\0"]
    return {"npy.dict": dict_text(npy_tokens), "csv.dict": dict_text(csv_tokens),
            "cli.dict": dict_text(cli_tokens)}


def generated():
    files = {}
    for target, seeds in (("npy", npy_seeds()), ("csv", csv_seeds()), ("idx", idx_seeds()),
                          ("cli", cli_seeds())):
        for name, data in seeds.items():
            files[Path("corpus") / target / name] = data
    for name, text in dictionaries().items():
        files[Path(name)] = text.encode()
    return files


def main():
    check = "--check" in sys.argv[1:]
    files = generated()
    changed = [p for p, data in files.items()
               if not (HERE / p).is_file() or (HERE / p).read_bytes() != data]
    if check:
        for path in sorted(changed):
            print(f"make_corpus.py --check: tests/fuzz/{path} is out of date", file=sys.stderr)
        return 1 if changed else 0
    for path, data in files.items():
        (HERE / path).parent.mkdir(parents=True, exist_ok=True)
        (HERE / path).write_bytes(data)
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} files ({total} bytes) under tests/fuzz/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
