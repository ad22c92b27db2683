"""qwen_embed.shards: written checkpoints proven with the reference reader and writer (`safetensors`) and
Hugging Face's shard naming, index format and splitting (`huggingface_hub`)."""

from __future__ import annotations

import json
import random
import struct
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from qwen_embed.shards import (
    CODE_DTYPES,
    DTYPE_CODES,
    INDEX_NAME,
    SINGLE_NAME,
    TensorSpec,
    plan_shards,
    shard_names,
    split_shards,
    write_shards,
)

ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
              torch.int8, torch.uint8, torch.bool]


def spec(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(t.shape), t.dtype)


def raw(t: torch.Tensor) -> bytes:
    """The tensor's bytes in C order (what bit-exact means here)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bit_exact(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert raw(got) == raw(want)


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random values of `dtype`; floats include nan, +-inf, -0.0 and a subnormal when there is room."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        t = (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
        flat = t.reshape(-1)
        specials = [float("nan"), float("inf"), float("-inf"), -0.0, torch.finfo(dtype).smallest_normal / 4]
        flat[: min(len(specials), flat.numel())] = torch.tensor(specials[: flat.numel()], dtype=torch.float64).to(dtype)
        return t
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=dtype)


def header(path: Path) -> tuple[int, bytes]:
    """(N, the N header bytes) read as the safetensors specification lays them out."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, f.read(n)


def load_indexed(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded checkpoint, read as transformers does: the index's weight_map, then safe_open."""
    index = json.loads((folder / INDEX_NAME).read_text())
    out: dict[str, torch.Tensor] = {}
    for file in sorted(set(index["weight_map"].values())):
        with safe_open(folder / file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                assert index["weight_map"][key] == file
                out[key] = f.get_tensor(key)
    assert set(out) == set(index["weight_map"])
    return out


# -- TensorSpec and dtype codes -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 0, 5), (2, 3, 4)])
def test_nbytes_is_torch_nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    assert TensorSpec("x", shape, dtype).nbytes == torch.empty(shape, dtype=dtype).nbytes


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_dtype_codes_are_the_reference_writers(dtype: torch.dtype, tmp_path: Path) -> None:
    save_file({"t": torch.zeros(2, dtype=dtype)}, str(tmp_path / "ref.safetensors"))
    _, h = header(tmp_path / "ref.safetensors")
    assert DTYPE_CODES[dtype] == json.loads(h)["t"]["dtype"]
    assert CODE_DTYPES[DTYPE_CODES[dtype]] == dtype
    assert set(DTYPE_CODES) == set(ALL_DTYPES)


# -- one file ------------------------------------------------------------------------------------------------
def test_single_file_round_trips_bit_exact(tmp_path: Path) -> None:
    tensors = {f"layers.{i}.{str(d).removeprefix('torch.')}": sample(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)}
    tensors["scalar"] = torch.tensor(3.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.empty(0, 4, dtype=torch.float16)
    tensors["transposed"] = sample(torch.float32, (4, 6), 99).t()  # not contiguous: written in logical order
    specs = [spec(k, v) for k, v in tensors.items()]
    written = write_shards(tmp_path, [specs], lambda s: tensors[s.name])
    assert written == [tmp_path / SINGLE_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_NAME]  # no index for one file
    loaded = load_file(tmp_path / SINGLE_NAME)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert_bit_exact(loaded[k], v)
    with safe_open(tmp_path / SINGLE_NAME, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert_bit_exact(f.get_tensor("layers.3.bfloat16"), tensors["layers.3.bfloat16"])
        assert_bit_exact(f.get_slice("transposed")[1:3], tensors["transposed"][1:3])


def test_header_layout_follows_the_specification(tmp_path: Path) -> None:
    """8-byte LE length, JSON padded with spaces to a multiple of 8, tensors contiguous in spec order."""
    tensors = {"z.first": sample(torch.int8, (3,), 1), "a.second": sample(torch.float64, (2, 2), 2),
               "m.third": sample(torch.bfloat16, (5,), 3), "b.fourth": sample(torch.bool, (7,), 4)}
    write_shards(tmp_path, [[spec(k, v) for k, v in tensors.items()]], lambda s: tensors[s.name],
                 metadata={"format": "pt", "origin": "test"})
    path = tmp_path / SINGLE_NAME
    n, h = header(path)
    assert n % 8 == 0
    text = h.decode("utf-8")
    assert text.startswith("{") and text.rstrip(" ").endswith("}") and set(text[len(text.rstrip(" ")):]) <= {" "}
    entries = json.loads(text)
    assert entries.pop("__metadata__") == {"format": "pt", "origin": "test"}
    assert list(entries) == list(tensors)  # file order is the order asked for
    data = path.read_bytes()[8 + n:]
    offset = 0
    for name, t in tensors.items():
        e = entries[name]
        assert e["dtype"] == DTYPE_CODES[t.dtype] and e["shape"] == list(t.shape)
        assert e["data_offsets"] == [offset, offset + t.nbytes]
        assert data[offset: offset + t.nbytes] == raw(t)
        offset += t.nbytes
    assert offset == len(data)
    for k, v in load_file(path).items():
        assert_bit_exact(v, tensors[k])


def test_byte_identical_to_the_reference_writer(tmp_path: Path) -> None:
    """In the reference writer's own order (one dtype, sorted names) the file is the same, byte for byte."""
    tensors = {"a.weight": sample(torch.bfloat16, (3, 5), 1), "b": sample(torch.bfloat16, (7,), 2),
               "c.bias": sample(torch.bfloat16, (1,), 3)}
    write_shards(tmp_path, [[spec(k, v) for k, v in tensors.items()]], lambda s: tensors[s.name])
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / SINGLE_NAME).read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_no_tensors_is_a_valid_empty_file(tmp_path: Path) -> None:
    def produce(s: TensorSpec) -> torch.Tensor:
        raise AssertionError("nothing to produce")

    shards = plan_shards([], 100)
    assert shards == [[]]
    assert write_shards(tmp_path, shards, produce) == [tmp_path / SINGLE_NAME]
    assert load_file(tmp_path / SINGLE_NAME) == {}
    with safe_open(tmp_path / SINGLE_NAME, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


# -- several files -------------------------------------------------------------------------------------------
def test_sharded_write_matches_huggingface_split_and_index(tmp_path: Path) -> None:
    """No tensor over the bound: the same files, grouping and index as huggingface_hub's splitter."""
    from huggingface_hub import constants
    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    sizes = [2, 2, 3, 1, 4, 3, 1, 1, 6, 3]
    tensors = {f"layers.{i}.w": sample(torch.float32 if i % 2 else torch.bfloat16, (n, 2), i)
               for i, n in enumerate(sizes)}  # 4..24 bytes each
    limit = 24
    assert max(v.nbytes for v in tensors.values()) <= limit
    specs = [spec(k, v) for k, v in tensors.items()]
    shards = plan_shards(specs, limit)
    # split_torch_state_dict_into_shards with the tensors' own sizes (it would import torch.distributed: 1 s)
    split = split_state_dict_into_shards_factory(tensors, get_storage_size=lambda t: t.nbytes, max_shard_size=limit,
                                                 filename_pattern=constants.SAFETENSORS_WEIGHTS_FILE_PATTERN)
    assert split.is_sharded and len(shards) == len(split.filename_to_tensors)
    assert [[s.name for s in group] for group in shards] == list(split.filename_to_tensors.values())
    assert shard_names(len(shards)) == list(split.filename_to_tensors)

    written = write_shards(tmp_path, shards, lambda s: tensors[s.name])
    assert written == [tmp_path / n for n in split.filename_to_tensors] + [tmp_path / INDEX_NAME]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == split.metadata["total_size"] == sum(v.nbytes for v in tensors.values())
    assert index["weight_map"] == split.tensor_to_filename
    for k, v in load_indexed(tmp_path).items():
        assert_bit_exact(v, tensors[k])
    for name, keys in split.filename_to_tensors.items():
        n, h = header(tmp_path / name)
        assert (tmp_path / name).stat().st_size - 8 - n <= limit
        assert [k for k in json.loads(h) if k != "__metadata__"] == keys


def test_tensor_over_the_bound_gets_a_shard_of_its_own(tmp_path: Path) -> None:
    t = {"a": sample(torch.float32, (2,), 1), "big": sample(torch.float16, (50,), 2),
         "c": sample(torch.int8, (8,), 3), "d": sample(torch.int32, (2,), 4), "huge": sample(torch.float64, (20,), 5)}
    specs = [spec(k, v) for k, v in t.items()]  # 8, 100, 8, 8, 160 bytes
    shards = plan_shards(specs, 16)
    assert [[s.name for s in g] for g in shards] == [["a"], ["big"], ["c", "d"], ["huge"]]  # order kept
    written = write_shards(tmp_path, shards, lambda s: t[s.name], metadata={"format": "pt", "k": "v"})
    names = ["model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
             "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"]
    assert [p.name for p in written] == [*names, INDEX_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, INDEX_NAME])
    in_file = []
    for name in names:
        with safe_open(tmp_path / name, framework="pt") as f:
            assert f.metadata() == {"format": "pt", "k": "v"}  # metadata in every shard
        _, h = header(tmp_path / name)
        in_file += [k for k in json.loads(h) if k != "__metadata__"]
    assert in_file == list(t)  # consecutive: the shards in file order hold the tensors in input order
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["weight_map"] == {"a": names[0], "big": names[1], "c": names[2], "d": names[2], "huge": names[3]}
    assert index["metadata"]["total_size"] == 8 + 100 + 8 + 8 + 160
    for k, v in load_indexed(tmp_path).items():
        assert_bit_exact(v, t[k])


def test_plan_shards_boundaries() -> None:
    four = [TensorSpec(f"t{i}", (2,), torch.float32) for i in range(4)]  # 8 bytes each

    def names(shards: list[list[TensorSpec]]) -> list[list[str]]:
        return [[s.name for s in g] for g in shards]

    assert names(plan_shards(four, 16)) == [["t0", "t1"], ["t2", "t3"]]  # exactly the bound: kept together
    assert names(plan_shards(four, 15)) == [["t0"], ["t1"], ["t2"], ["t3"]]
    assert names(plan_shards(four, 24)) == [["t0", "t1", "t2"], ["t3"]]
    assert names(plan_shards(four, 10**12)) == [["t0", "t1", "t2", "t3"]]
    assert names(plan_shards(four, 0)) == [["t0"], ["t1"], ["t2"], ["t3"]]
    assert names(plan_shards(four[:1], 1)) == [["t0"]]


def test_plan_shards_properties() -> None:
    """Random plans: order kept, no empty shard, within the bound unless alone, each shard filled greedily."""
    rng = random.Random(0)
    dtypes = [torch.float32, torch.bfloat16, torch.int8, torch.float64]
    for case in range(300):
        specs = [TensorSpec(f"t{i}", (rng.randint(0, 40),), rng.choice(dtypes)) for i in range(rng.randint(1, 25))]
        limit = rng.randint(0, 200)
        shards = plan_shards(specs, limit)
        assert [s for g in shards for s in g] == specs, case
        for g, following in zip(shards, [*shards[1:], None], strict=True):
            assert g, case
            assert len(g) == 1 or sum(s.nbytes for s in g) <= limit, case
            if following is not None:  # the next tensor did not fit (as transformers' save_pretrained fills)
                assert sum(s.nbytes for s in g) + following[0].nbytes > limit, case


# -- split_shards and names --------------------------------------------------------------------------------
def test_split_shards_consecutive_groups() -> None:
    specs = [TensorSpec(f"t{i}", (1,), torch.float32) for i in range(6)]
    assert split_shards(specs, 3) == [specs[0:2], specs[2:4], specs[4:6]]
    assert split_shards(specs, 2) == [specs[0:3], specs[3:6]]
    assert split_shards(specs, 1) == [specs]
    assert split_shards(specs, 0) == [specs]
    assert split_shards(specs, 6) == [[s] for s in specs]


def test_split_shards_gives_the_number_asked_for() -> None:
    for n in range(1, 13):
        specs = [TensorSpec(f"t{i}", (1,), torch.float32) for i in range(n)]
        for k in range(1, n + 1):
            groups = split_shards(specs, k)
            assert [s for g in groups for s in g] == specs
            sizes = [len(g) for g in groups]
            assert len(groups) == k and max(sizes) - min(sizes) <= 1, (n, k, sizes)


def test_split_shards_of_nothing_is_one_empty_shard() -> None:
    assert split_shards([], 3) == [[]]


def test_shard_names_are_transformers_names() -> None:
    from huggingface_hub import constants

    assert (SINGLE_NAME, INDEX_NAME) == (constants.SAFETENSORS_SINGLE_FILE, constants.SAFETENSORS_INDEX_FILE)
    assert shard_names(1) == ["model.safetensors"]
    assert shard_names(3) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                              "model-00003-of-00003.safetensors"]
    assert shard_names(12)[9] == "model-00010-of-00012.safetensors"


# -- what write_shards checks and promises ---------------------------------------------------------------
def test_produced_tensor_must_match_its_spec(tmp_path: Path) -> None:
    s = TensorSpec("layer.w", (2, 3), torch.bfloat16)
    with pytest.raises(AssertionError, match=r"layer\.w"):
        write_shards(tmp_path, [[s]], lambda _: torch.zeros(3, 2, dtype=torch.bfloat16))
    with pytest.raises(AssertionError, match=r"layer\.w.*float32"):
        write_shards(tmp_path, [[s]], lambda _: torch.zeros(2, 3, dtype=torch.float32))


def test_unsupported_dtype_is_refused_naming_the_tensor_before_any_file(tmp_path: Path) -> None:
    ok, s = TensorSpec("a", (2,), torch.float32), TensorSpec("rot.w", (2,), torch.complex64)
    with pytest.raises(ValueError, match=r"rot\.w.*complex64"):
        write_shards(tmp_path, [[ok], [s]], lambda spec: torch.zeros(2, dtype=spec.dtype))
    assert list(tmp_path.iterdir()) == []  # no shard written, not even the first, nor an empty file


@pytest.mark.parametrize("plan", [[["a", "b", "a"]], [["a", "b"], ["c", "b"]], [["__metadata__"]]])
def test_a_name_given_twice_or_reserved_is_refused_before_any_file(tmp_path: Path, plan: list[list[str]]) -> None:
    """safetensors maps each name to one tensor (the reference writer refuses a repeat; a file written with
    one could not be read), and `__metadata__` is the header's own key."""
    shards = [[TensorSpec(n, (2,), torch.float32) for n in names] for names in plan]
    with pytest.raises(ValueError, match=r"is given twice or reserved"):
        write_shards(tmp_path, shards, lambda spec: torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


def test_metadata_is_added_to_format_pt(tmp_path: Path) -> None:
    """transformers reads `format: pt` from the metadata; a caller's keys are added to it, not put in its place."""
    t = torch.arange(4, dtype=torch.float32)
    write_shards(tmp_path, [[TensorSpec("w", (4,), torch.float32)]], lambda _: t, metadata={"origin": "merge"})
    with safe_open(str(tmp_path / SINGLE_NAME), "pt") as f:
        assert f.metadata() == {"format": "pt", "origin": "merge"}


def test_produce_is_asked_in_order_and_one_tensor_is_held_at_a_time(tmp_path: Path) -> None:
    specs = [TensorSpec(f"t{i}", (64,), torch.float32) for i in range(9)]
    asked: list[str] = []
    alive: list[weakref.ref[torch.Tensor]] = []

    def produce(s: TensorSpec) -> torch.Tensor:
        asked.append(s.name)
        assert sum(r() is not None for r in alive) <= 1, f"{s.name}: earlier tensors still held"
        t = torch.full(s.shape, float(len(asked)), dtype=s.dtype)
        alive.append(weakref.ref(t))
        return t

    shards = plan_shards(specs, 3 * 256)
    assert len(shards) == 3
    write_shards(tmp_path, shards, produce)
    assert asked == [s.name for s in specs]
    loaded = load_indexed(tmp_path)
    assert [float(loaded[s.name][0]) for s in specs] == [float(i + 1) for i in range(9)]
