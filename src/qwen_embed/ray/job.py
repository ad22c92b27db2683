"""The embed-corpus job: a JSONL/Parquet corpus in, a folder of Parquet vectors out, on Ray or on this host.

    report = embed_corpus(CorpusJob("corpus.parquet", "vectors/", "Qwen/Qwen3-Embedding-0.6B", engine="ray"))

Steps, the same for both engines:
1. check the input (`source.open_corpus`: columns, types, ids present and unique, not empty) and the
   model's facts (config and tokenizer only: no weights are loaded on the driver);
2. open the output folder (`parts.PartsWriter`): refuse what is not ours, read back the ids a killed
   or failed run of the same job wrote, and skip them;
3. embed the remaining rows and write them in parts of at most `rows_per_file` rows, each written whole;
4. mark the output complete.

Engines: `local` streams the input in batches through one `Embedder` (or a `multidevice.DevicePool`
when several GPUs are asked) in this process; `ray` reads the same files with Ray Data (on the cluster
at `address`, or a local one), tokenizes in a CPU stage and embeds in an actor pool (`stages.py`),
and this process writes the parts as the batches stream back. Either can resume the other's output:
the vectors do not depend on the engine (up to the rounding of different batch neighbours).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError, QwenEmbedError, is_whole
from ..files import fingerprint
from .parts import PartsWriter
from .source import Corpus, check_batch, normalize_batch, open_corpus
from .stages import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_TOKENIZE,
    TOKENIZE_CPUS,
    actor_resources,
    check_dtype_out,
    check_tokenize,
)

ENGINES = ("local", "ray")
DEFAULT_ROWS_PER_FILE = 50_000


@dataclass(frozen=True)
class CorpusJob:
    """Everything an embed-corpus run needs (plain data, parsed once at the edge)."""

    input: str
    output: str
    model: str
    engine: str = "local"
    address: str | None = None  # Ray cluster address (default: RAY_ADDRESS, else a local cluster)
    num_gpus: int = 0  # GPUs to use: one Ray actor (or one local worker) each; 0 = CPU
    actors: int = 1  # CPU actors when num_gpus is 0 (Ray)
    cpus_per_actor: int = 1
    dim: int | None = None
    dtype_out: str = "float32"
    instruction: str | None = None
    id_column: str = "id"
    text_column: str = "text"
    keep_text: bool = False
    rows_per_file: int = DEFAULT_ROWS_PER_FILE
    batch_rows: int = DEFAULT_BATCH_ROWS
    tokenize: str = DEFAULT_TOKENIZE
    overwrite: bool = False
    device: str | None = None
    dtype: str | None = None
    max_length: int | None = None  # None: 8192, or the model's limit where lower
    batch_tokens: int | None = None
    deterministic: bool = False  # batch-invariant kernels: a row's vector does not depend on its batch
    progress: bool = False


@dataclass
class CorpusReport:
    """What a run did."""

    rows: int = 0  # rows in the input
    resumed: int = 0  # rows found written by an earlier run and skipped
    written: int = 0  # rows embedded and written by this run
    parts: int = 0  # parts written by this run
    seconds: float = 0.0
    output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        return (f"{self.rows} rows: {self.written} embedded into {self.parts} parts in {self.seconds:.1f} s "
                f"({rate:.1f} rows/s), {self.resumed} already written ({self.output})")


def check_job(job: CorpusJob) -> None:
    """Refuse bad options before any reading."""
    if job.engine not in ENGINES:
        raise InputError(f"engine={job.engine!r} is not known; use one of {', '.join(ENGINES)}.")
    check_dtype_out(job.dtype_out)
    check_tokenize(job.tokenize)
    actor_resources(job.num_gpus, job.actors, job.cpus_per_actor)
    for name, value in (("rows_per_file", job.rows_per_file), ("batch_rows", job.batch_rows)):
        if not is_whole(value, 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    if job.address is not None and job.engine != "ray":
        raise InputError("--address is a Ray cluster address; it needs --engine ray.")
    if job.device is not None and job.engine == "ray":
        raise InputError(f"--device {job.device} is for --engine local; on Ray, --num-gpus N puts one model on each "
                         "of N GPUs (0: CPU actors).")


def model_facts(model: str, dim: int | None, max_length: int | None) -> dict[str, Any]:
    """What the output records about the model (and a table needs), from its config and tokenizer only."""
    from ..config import ModelConfig
    from ..embedder import check_max_length
    from ..hub import resolve_model_dir, weights_fingerprint
    from ..pooling import check_dim
    from ..retrieval.index import model_id
    from ..tokenizer import QwenTokenizer

    path = resolve_model_dir(model)
    cfg = ModelConfig.from_file(path / "config.json")
    return {"model": model_id(model), "dim": check_dim(dim, cfg.hidden_size), "hidden_size": cfg.hidden_size,
            "tokenizer_fingerprint": QwenTokenizer.from_dir(path).fingerprint,
            "max_length": check_max_length(max_length, cfg),
            # the weights themselves: two fine-tunes in folders of one name (runs/a/model, runs/b/model), or
            # weights retrained in place, are other models (a table refuses mixing them; a resume starts anew)
            "weights_fingerprint": weights_fingerprint(path)}


def embed_corpus(job: CorpusJob) -> CorpusReport:
    """Run the job (see the module docstring) -> a report; resumes a killed run of the same job."""
    t0 = time.perf_counter()
    check_job(job)
    facts = model_facts(job.model, job.dim, job.max_length)
    source = job.input if "://" in job.input else os.path.abspath(job.input)
    manifest = {**facts, "dtype_out": job.dtype_out, "instruction": job.instruction, "keep_text": job.keep_text,
                "input": source, "id_column": job.id_column, "text_column": job.text_column}
    if job.deterministic:  # another job (its vectors differ in the last bits); recorded only when on, so that the
        manifest["deterministic"] = True  # outputs of runs before this setting existed keep their fingerprint
    PartsWriter.check(job.output, job=fingerprint(manifest), overwrite=job.overwrite)  # before reading the input
    corpus = open_corpus(job.input, id_column=job.id_column, text_column=job.text_column)
    writer = PartsWriter.open(job.output, job=fingerprint(manifest), manifest=manifest, dim=facts["dim"],
                              dtype_out=job.dtype_out, keep_text=job.keep_text, overwrite=job.overwrite)
    try:
        extra = writer.done.difference(corpus.ids.to_pylist()) if writer.done else set()
        if extra:
            raise InputError(f"output {job.output} holds id {sorted(extra)[0]!r}, which the input does not have: "
                             "the input changed since that run; pass --overwrite to start again.")
        report = CorpusReport(rows=len(corpus), resumed=len(writer.done), output=job.output)
        if len(writer.done) < len(corpus):
            run = run_local if job.engine == "local" else run_ray
            run(job, corpus, writer, facts["dim"])
        writer.finish(len(corpus))
    finally:
        writer.close()
    report.written, report.parts = writer.rows_written, writer.next_part - 1 - writer.resumed_parts
    report.seconds = time.perf_counter() - t0
    return report


# -- local engine ----------------------------------------------------------------------------------
def _pending(table: pa.Table, done: pa.Array | None) -> pa.Table:
    if done is None or len(done) == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done)))


def _rows(corpus: Corpus, done: set[str], rows: int) -> Iterator[pa.Table]:
    """The input's rows not yet written, in tables of exactly `rows` rows (the last one shorter)."""
    skip = pa.array(sorted(done), pa.string()) if done else None
    buffer: list[pa.Table] = []
    held = 0
    for table in corpus.batches(min(rows, 65_536)):
        table = _pending(table, skip)
        buffer.append(table)
        held += table.num_rows
        while held >= rows:
            whole = pa.concat_tables(buffer)
            yield whole.slice(0, rows)
            rest = whole.slice(rows)
            buffer, held = [rest], rest.num_rows
    if held:
        yield pa.concat_tables(buffer)


def _local_encoder(job: CorpusJob) -> tuple[Callable[[list[str]], np.ndarray], Callable[[], None]]:
    """encode(texts) -> vectors, and a close(): one Embedder, or a DevicePool over `num_gpus` GPUs."""
    if job.num_gpus > 1:
        from ..multidevice import DevicePool

        pool = DevicePool(job.model, [f"cuda:{i}" for i in range(job.num_gpus)], dtype=job.dtype,
                          max_length=job.max_length, batch_tokens=job.batch_tokens, deterministic=job.deterministic)
        return (lambda texts: pool.encode(texts, instruction=job.instruction, dim=job.dim)), pool.close
    from ..embedder import Embedder

    device = job.device or ("cuda" if job.num_gpus == 1 else None)
    emb = Embedder.from_pretrained(job.model, device=device, dtype=job.dtype, max_length=job.max_length,
                                   batch_tokens=job.batch_tokens, deterministic=job.deterministic)
    return (lambda texts: emb.encode(texts, instruction=job.instruction, dim=job.dim, progress=False)), lambda: None


def run_local(job: CorpusJob, corpus: Corpus, writer: PartsWriter, dim: int) -> None:
    """Embed the rows not yet written on this host, one part per `rows_per_file` rows."""
    encode, close = _local_encoder(job)
    try:
        for table in _rows(corpus, writer.done, job.rows_per_file):
            texts = table.column("text").to_pylist()
            vecs = encode(texts)
            writer.write(table.column("id").to_pylist(), vecs, texts if job.keep_text else None)
            if job.progress:
                print(f"embed-corpus: {len(writer.done)}/{len(corpus)} rows", file=sys.stderr)
    finally:
        close()


# -- Ray engine ------------------------------------------------------------------------------------
def prepare_batch(batch: pa.Table, *, id_column: str, text_column: str, done: pa.Array | None) -> pa.Table:
    """Ray stage: the id/text columns as `id`/`text`, checked, without the rows already written."""
    return _pending(check_batch(normalize_batch(batch, id_column, text_column)), done)


def _connect(address: str | None) -> bool:
    """Connect to (or start) a Ray cluster unless this process is connected; True when we did."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs.pop("address")
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise InputError(f"cannot connect to the Ray cluster at {address}: {e}; start one with `ray start --head` "
                         "or leave --address out for a local cluster.") from None
    return True


def read_ray(corpus: Corpus) -> Any:
    """The corpus's files as a Ray Dataset (same files, filesystem and JSON parsing as the local engine)."""
    import ray.data

    # Read tasks reserve no CPU: model actors may take every core (2 CPU actors on 2 cores), and a read
    # task waiting for a core they hold would wait forever. Reading is light next to the model.
    if corpus.format == "parquet":
        return ray.data.read_parquet(corpus.files, filesystem=corpus.fs, num_cpus=0,
                                     columns=[corpus.id_column, corpus.text_column])
    return ray.data.read_json(corpus.files, filesystem=corpus.fs, num_cpus=0,
                              parse_options=corpus.json_parse_options,
                              read_options=corpus.json_read_options)


def check_cluster(job: CorpusJob) -> None:
    """Refuse a CPU job whose tokenize stage would find no free core beside the model actors (Ray would wait
    forever), and GPU actors on a cluster without GPUs."""
    import ray

    have = ray.cluster_resources()
    if job.num_gpus and not have.get("GPU"):
        raise InputError(f"--num-gpus {job.num_gpus}: the Ray cluster has no GPUs; start nodes with GPUs or use "
                         "--num-gpus 0 (CPU actors).")
    if job.num_gpus or job.tokenize != "stage":
        return
    need = job.actors * job.cpus_per_actor + TOKENIZE_CPUS
    if need > have.get("CPU", 0):
        raise InputError(f"--tokenize stage with {job.actors} CPU actor(s) of {job.cpus_per_actor} core(s) needs "
                         f"{need:g} CPUs, the cluster has {have.get('CPU', 0):g}; use fewer --actors or "
                         "--tokenize actor.")


def _user_error(e: BaseException) -> BaseException:
    """The QwenEmbedError inside a Ray task error, if there is one."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        if isinstance(cur, QwenEmbedError) and type(cur).__module__.startswith("qwen_embed"):
            return type(cur)(str(cur).splitlines()[0])  # Ray appends its retry advice to the message
        cur = getattr(cur, "cause", None) or cur.__cause__
        seen += 1
    return e


def run_ray(job: CorpusJob, corpus: Corpus, writer: PartsWriter, dim: int) -> None:
    """Embed the rows not yet written on a Ray cluster; this process writes the parts as they stream in."""
    import ray
    import ray.data

    from .stages import embed_dataset

    started = _connect(job.address)
    try:
        check_cluster(job)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = job.progress
        ctx.raise_original_map_exception = True  # an InputError of a stage reaches us as itself (one line)
        done = pa.array(sorted(writer.done), pa.string()) if writer.done else None
        ds = read_ray(corpus).map_batches(prepare_batch, batch_format="pyarrow",
                                          fn_kwargs={"id_column": corpus.id_column, "text_column": corpus.text_column,
                                                     "done": done})
        ds = embed_dataset(ds, job.model, dim=dim, dtype_out=job.dtype_out, instruction=job.instruction,
                           num_gpus=job.num_gpus, actors=job.actors, cpus_per_actor=job.cpus_per_actor,
                           batch_rows=job.batch_rows, tokenize=job.tokenize, drop_text=not job.keep_text,
                           dtype=job.dtype, max_length=job.max_length, batch_tokens=job.batch_tokens,
                           deterministic=job.deterministic)
        try:
            for batch in ds.iter_batches(batch_size=job.rows_per_file, batch_format="pyarrow"):
                writer.write_table(batch)
                if job.progress:
                    print(f"embed-corpus: {len(writer.done)}/{len(corpus)} rows", file=sys.stderr)
        except Exception as e:
            err = _user_error(e)
            if err is e:
                raise
            raise err from None
    finally:
        if started:
            ray.shutdown()

