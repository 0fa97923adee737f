"""Memory and speed against the data set's size: the standard model trained
from a TFRecord stream of N 28x28 images, decoded once into a temporary file
(what a run does by default) or decoded every epoch (--nodisk_cache), and
from the in-memory path.

The records are the 4,000 `mnist_5k` training digits, each PNG-encoded once
and written again and again (with their labels) until there are N: images as
a user's TFRecords hold them, written in seconds even for a million. Each
measurement runs in a fresh process of its own, one after another (so none
shares the CPU with another), and reports that process's peak RSS.
"""

import os
import time

import numpy as np
import tensorflow as tf

from benchmarks import memory, ours
from benchmarks.standard import training_arrays
from tfp_vae import data, input_pipeline

SHARD_RECORDS = 65_536          # records per TFRecord file


def write_shards(directory: str, n: int) -> str:
    """Writes n records as train-XXXXX.tfrecord shards (plus one small
    validation and test file, so the train files are the train split whole);
    returns the glob pattern of them all."""
    x = training_arrays()
    y = data.load_arrays("mnist_5k", "train")[1]
    pixels = np.round(x * 255).astype(np.uint8)
    records = [tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[tf.io.encode_png(p).numpy()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}))
        .SerializeToString() for p, label in zip(pixels, y)]
    os.makedirs(directory, exist_ok=True)
    shards = -(-n // SHARD_RECORDS)
    for s in range(shards):
        with tf.io.TFRecordWriter(os.path.join(directory, f"train-{s:05d}.tfrecord")) as w:
            for i in range(s * SHARD_RECORDS, min(n, (s + 1) * SHARD_RECORDS)):
                w.write(records[i % len(records)])
    for split in ("validation", "test"):
        with tf.io.TFRecordWriter(os.path.join(directory, f"{split}.tfrecord")) as w:
            for record in records[:256]:
                w.write(record)
    return os.path.join(directory, "*.tfrecord")


SOURCES = ("decoded", "files", "memory")    # the probes' sources, as the table names them


def probe(source: str, path: str, n: int, steps: int, warmup: int) -> dict:
    """In a fresh process: `steps` training steps of the standard model (after
    `warmup` untimed ones) from n images: the stream of the TFRecords at
    `path` decoded once into a temporary file (source "decoded") or decoded
    as read (source "files"), or images in memory (source "memory", `path`
    unused); examples/s, the process's CPU time per example over the timed
    steps (every thread's: the training step's and the input pipeline's,
    microseconds) and peak RSS (MiB)."""
    impl = ours.TfpVae(training_arrays()[:128])
    config = impl.config
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    prepared = {}
    if source == "memory":      # as train.train keeps it: one tensor for every epoch's pass
        x = training_arrays()
        images = tf.constant(np.concatenate([x] * -(-n // len(x)))[:n])
    else:       # indexed as train.train indexes it: one pass counts the records
        start = time.perf_counter()
        images = data.open_stream(path, "train")
        assert len(images) == n, (len(images), n)
        prepared["index_seconds"] = round(time.perf_counter() - start, 2)
        if source == "decoded":
            start = time.perf_counter()
            images = images.decoded()
            prepared["decode_seconds"] = round(time.perf_counter() - start, 2)
    per_epoch = -(-n // config.batch_size)
    epoch = [0]

    def train(total: int) -> int:
        done = 0
        while done < total:
            take = min(total - done, per_epoch)
            ds = input_pipeline.train_dataset(config, images, epoch[0]).take(take)
            impl.model.fit(ds, initial_epoch=epoch[0], epochs=epoch[0] + 1, verbose=0,
                           shuffle=False)
            epoch[0] += 1
            done += take
        return done * config.batch_size

    train(warmup)
    start, cpu_start = time.perf_counter(), time.process_time()
    examples = train(steps)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"path": source, "images": n,
            "train_examples_per_sec": examples / seconds, "steps": steps,
            "cpu_us_per_example": 1e6 * cpu / examples,
            "peak_rss_mb": memory.peak_rss_mb(), **prepared}


def resume_probe(path: str, n: int, batch: int, directory: str) -> dict:
    """In a fresh process: what resuming the stream of the TFRecords at `path`
    at its middle batch costs, three ways, each until the first batch is in
    hand: `Stream.dataset(skip=k)` (the k batches read and shuffled as
    records, not decoded: what a resumed run does), the same pass's
    ``.skip(k)`` (decoded, then dropped), and tf.data's saved iterator state
    (`tf.train.Checkpoint(iterator=...)`: what writing it, at the signal,
    and reading it back cost, and its size on disk). All three must give the
    same batch."""
    stream = data.open_stream(path, "train")
    assert len(stream) == n, (len(stream), n)
    k = -(-n // batch) // 2

    def pass_(skip=0):
        return stream.dataset(batch, seed=1, binarize="dynamic", skip=skip)

    def first_batch(ds):
        start = time.perf_counter()
        x = next(iter(ds)).numpy()
        return time.perf_counter() - start, x

    skip_records, a = first_batch(pass_(skip=k))
    skip_decoded, b = first_batch(pass_().skip(k))
    iterator = iter(pass_())
    for _ in range(k):
        next(iterator)
    start = time.perf_counter()
    prefix = tf.train.Checkpoint(iterator=iterator).write(os.path.join(directory, "iterator"))
    saved = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.startswith("iterator"))
    start = time.perf_counter()
    restored = iter(pass_())
    tf.train.Checkpoint(iterator=restored).read(prefix).assert_consumed()
    c = next(restored).numpy()
    read = time.perf_counter() - start
    assert np.array_equal(a, b) and np.array_equal(a, c), "the three resumes differ"
    return {"path": "resume", "images": n, "batch": batch, "skipped_batches": k,
            "skip_records_seconds": skip_records, "skip_decoded_seconds": skip_decoded,
            "iterator_save_seconds": saved, "iterator_restore_seconds": read,
            "iterator_state_mb": size / 2**20, "peak_rss_mb": memory.peak_rss_mb()}


def measure(script: str, sizes: list[int], steps: int, warmup: int, directory: str,
            memory_sizes: list[int], extra_flags: list[str]) -> dict:
    """Writes the shards of each size, then runs one probe per (path, size),
    one after another; the table rows and the ratios the README quotes."""
    rows, resumes = [], []
    for n in sizes:
        start = time.perf_counter()
        pattern = write_shards(os.path.join(directory, f"n{n}"), n)
        written = time.perf_counter() - start
        for source in ("decoded", "files"):
            row, = memory.run_probes(script, [extra_flags + [
                f"--probe=scaling:{source}:{pattern}:{n}"]])
            rows.append({**row, "write_seconds": round(written, 1)})
        resumes.append(*memory.run_probes(script, [extra_flags + [
            f"--probe=resume:{pattern}:{n}"]]))
    for n in memory_sizes:
        row, = memory.run_probes(script, [extra_flags + [f"--probe=scaling:memory:-:{n}"]])
        rows.append(row)
    by = {source: {r["images"]: r for r in rows if r["path"] == source} for source in SOURCES}
    ratios = {}
    for source in ("decoded", "files"):
        stream = by[source]
        if len(stream) > 1:
            small, large = min(stream), max(stream)
            ratios[f"{source}_rss_{large}_over_{small}"] = (stream[large]["peak_rss_mb"]
                                                            / stream[small]["peak_rss_mb"])
        for n in sorted(set(stream) & set(by["memory"])):
            ratios[f"{source}_over_memory_speed_{n}"] = (
                stream[n]["train_examples_per_sec"] / by["memory"][n]["train_examples_per_sec"])
    return {"rows": rows, "resume": resumes, "ratios": ratios, "steps": steps,
            "warmup_steps": warmup, "table": table(rows) + "\n\n" + resume_table(resumes)}


def table(rows: list[dict]) -> str:
    """The rows as the README's Markdown table."""
    names = {"decoded": "TFRecord stream, decoded once to a temporary file",
             "files": "TFRecord stream, decoded every epoch (--nodisk_cache)",
             "memory": "in memory"}
    lines = ["| source | images | peak RSS (MiB) | training examples/s | CPU-us an example |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {names[r['path']]} | {r['images']:,} | {r['peak_rss_mb']:.0f} | "
                     f"{r['train_examples_per_sec']:,.0f} | {r['cpu_us_per_example']:.0f} |")
    return "\n".join(lines)


def resume_table(rows: list[dict]) -> str:
    """The resume probes' rows as a Markdown table (seconds to the first batch)."""
    lines = ["| images | skipped batches | skip as records (s) | skip decoded (s) | "
             "iterator state: write (s) | read + first batch (s) | size (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['images']:,} | {r['skipped_batches']:,} | "
                     f"{r['skip_records_seconds']:.2f} | {r['skip_decoded_seconds']:.2f} | "
                     f"{r['iterator_save_seconds']:.2f} | {r['iterator_restore_seconds']:.2f} | "
                     f"{r['iterator_state_mb']:.1f} |")
    return "\n".join(lines)
