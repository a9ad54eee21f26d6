"""The shard folder: atomic shards, one sidecar per source, locks, and the manifest.

Each source's shards are written under temporary names and renamed when the source is done,
then a `<key>.json` sidecar records the result: a second run skips finished sources, a killed
run redoes only unfinished ones (their leftovers are deleted first), so shards are never
duplicated; a source file edited since it was ingested replaces its earlier version's shards.
`manifest.json` gathers the sidecars: counts, dropped pairs and why, errors. Other files in the
folder (a user's notes, an unrelated `.json`) are left alone and not read as sidecars.
"""
import fcntl
import glob
import json
import os
import time

import cv2

from cmp_tf import rundir

MANIFEST = "manifest.json"
DROP_REASONS = ("static", "scene_cut", "inconsistent", "bad_flow", "bad_file")
# Fields every sidecar holds (older sidecars lack only `shard_pairs`).
_SIDECAR_FIELDS = ("video", "key", "shards", "pairs", "dropped", "error")
# At most this many failed sources are named one by one in a summary.
_NAMED_FAILURES = 5
# Sources that failed before this process started are tried again (the cause may be fixed);
# those that failed since, in a process beside it (another worker of one job), are not.
_PROCESS_START = time.time()


def write_json(path, data):
    """Writes JSON atomically: a reader sees the old file or the new one, never half."""
    with rundir.whole_file(path) as partial, open(partial, "w") as f:
        json.dump(data, f, indent=1)


class ShardWriter:
    """Writes examples to `<key>-NNNN.tfrecord.tmp`; only `commit` gives them their real names,
    so a killed run never leaves a shard that looks finished."""

    def __init__(self, out_dir, key, per_shard):
        self.out_dir, self.key, self.per_shard = out_dir, key, per_shard
        self.paths, self.counts, self.count, self._writer = [], [], 0, None
        for leftover in glob.glob(os.path.join(out_dir, f"{key}-*.tfrecord*")):
            os.remove(leftover)  # from a run killed before its sidecar was written

    def write(self, example):
        import tensorflow as tf  # here: the pool's worker processes import it on first use

        if self._writer is None:
            self.paths.append(os.path.join(self.out_dir, f"{self.key}-{len(self.paths):04d}"
                                                         ".tfrecord"))
            self.counts.append(0)
            self._writer = tf.io.TFRecordWriter(f"{self.paths[-1]}.tmp")
        self._writer.write(example)
        self.count += 1
        self.counts[-1] += 1
        if self.count % self.per_shard == 0:
            self._close()

    def _close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self):
        self._close()
        for path in self.paths:
            os.replace(f"{path}.tmp", path)
        return [os.path.basename(p) for p in self.paths]

    def abort(self):
        self._close()
        for path in self.paths:
            os.remove(f"{path}.tmp")


def ingest_once(source, out_dir, key, cfg, produce, fields):
    """Runs `produce(record, writer, cfg)` for one source file, once: the bookkeeping shared by
    videos and list files (sidecar, leftovers, errors, atomic shards).

    An exclusive lock per source makes concurrent runs safe (the workers of a multi-worker
    job ingesting into one cache, two ingest commands): the second waits, then finds the
    sidecar; without it, one would delete the other's unfinished shards as leftovers.

    Args:
        cfg: the full `config.ingest` (pairs_per_shard, on_error...).
    Returns:
        The source's sidecar record, with `skipped` True if it was already done.
    """
    os.makedirs(out_dir, exist_ok=True)
    sidecar = os.path.join(out_dir, f"{key}.json")
    with open(os.path.join(out_dir, f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        done, why_again = _earlier_result(out_dir, sidecar)
        if done is not None:
            return {**done, "skipped": True}
        record = dict(video=os.path.abspath(source), key=key, shards=[], shard_pairs=[],
                      pairs=0, dropped={r: 0 for r in DROP_REASONS}, error=None,
                      warnings=[why_again] if why_again else [], **fields)
        earlier = _earlier_versions(out_dir, record)
        if earlier:
            record["warnings"].append(
                f"replaced {sum(r['pairs'] for r in earlier)} pairs ingested from an earlier "
                f"version of this file ({', '.join(r['key'] for r in earlier)})")
        writer = ShardWriter(out_dir, key, cfg["pairs_per_shard"])
        try:
            produce(record, writer, cfg)
        except (ValueError, cv2.error) as e:
            writer.abort()
            if cfg["on_error"] == "raise":
                if isinstance(e, cv2.error):  # not a ValueError: the command's traceback
                    raise ValueError(f"{source}: OpenCV failed: {str(e).strip()}") from e
                raise
            record["error"] = str(e).strip()
        else:
            record["shards"] = writer.commit()
            record["shard_pairs"] = writer.counts
            record["pairs"] = writer.count
        write_json(sidecar, record)
        for stale in earlier:
            _remove_source(out_dir, stale)
        return {**record, "skipped": False}


def _earlier_result(out_dir, sidecar):
    """(the sidecar's record, None) if its source is done and its shards are all there; else
    (None, why it is ingested again, or None for a source never seen). A source that failed
    before this process started is tried again, as is one whose sidecar is unreadable or
    whose shards were deleted since: a rerun mends them rather than repeating the failure or
    training on a cache with holes."""
    if not os.path.exists(sidecar):
        return None, None
    record = _as_sidecar(sidecar)
    if record is None:
        return None, f"ingested again: its record {sidecar} did not read back"
    if record["error"] and os.path.getmtime(sidecar) < _PROCESS_START:
        return None, f"ingested again: it failed before ({record['error']})"
    missing = [s for s in record["shards"] if not os.path.isfile(os.path.join(out_dir, s))]
    if missing:
        return None, f"ingested again: its shard {missing[0]} was missing"
    return record, None


def _earlier_versions(out_dir, record):
    """The sidecars in `out_dir` of the same source file and ingest config as `record` but of
    an earlier version of the file (edited or replaced since): nothing can reach their keys
    again, and a folder read as shards would feed both versions. Sidecars that do not record
    the version are left alone."""
    return [other for other in read_sidecars(out_dir)[0]
            if other["video"] == record["video"] and other["key"] != record["key"]
            and other.get("config_digest") == record["config_digest"]
            and other.get("file_version") not in (None, record["file_version"])]


def _remove_source(out_dir, record):
    """Removes a source's sidecar, then its shards and lock, unless another process holds it.
    The sidecar goes first: shards without one are not read while other sidecars exist."""
    lock_path = os.path.join(out_dir, f"{record['key']}.lock")
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # being ingested right now: leave it
            return
        os.remove(os.path.join(out_dir, f"{record['key']}.json"))
        for shard in record["shards"]:
            path = os.path.join(out_dir, shard)
            if os.path.isfile(path):
                os.remove(path)
        os.remove(lock_path)


def _as_sidecar(path):
    """The sidecar record in `path`, or None if the file is not one of ours."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(k not in record for k in _SIDECAR_FIELDS):
        return None
    if record["key"] != os.path.basename(path)[:-len(".json")]:
        return None
    return record


def read_sidecars(folder):
    """(sidecar records, paths of other .json files) of a shard folder, both sorted by path.

    Only files ingestion wrote count: a `.json` that does not parse, or lacks the sidecar
    fields, or whose `key` is not its name, belongs to someone else and is left alone.
    """
    records, others = [], []
    for path in sorted(glob.glob(os.path.join(os.fspath(folder), "*.json"))):
        if os.path.basename(path) == MANIFEST:
            continue
        record = _as_sidecar(path)
        if record is None:
            others.append(path)
        else:
            records.append(record)
    return records, others


def gather(out_dir, config):
    """Writes manifest.json from the sidecars in `out_dir`: totals, drops, errors, and the other
    .json files left alone (`ignored`). `config` is the full `config.ingest` it records."""
    records, others = read_sidecars(out_dir)
    totals = dict(videos=len(records), pairs=sum(r["pairs"] for r in records),
                  dropped={k: sum(r["dropped"].get(k, 0) for r in records)  # older sidecars
                           for k in DROP_REASONS},
                  errors=sum(bool(r["error"]) for r in records))
    manifest = dict(config=config, totals=totals,
                    sources=sorted(records, key=lambda r: r["video"]),
                    ignored=[os.path.basename(p) for p in others])
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


def _named(sources, why):
    """The first _NAMED_FAILURES sources by file name, each with `why(source)`, then how many
    more."""
    named = "; ".join(f"{os.path.basename(s['video'])} ({why(s)})"
                      for s in sources[:_NAMED_FAILURES])
    more = len(sources) - _NAMED_FAILURES
    return named + (f"; and {more} more" if more > 0 else "")


def summarize(sources):
    """One line on what ingestion made of `sources` (sidecar records): pairs, failed files with
    their reasons, dropped pairs by reason. What a user must see before trusting a run."""
    if not sources:
        return "No videos or list files were ingested."
    failed = [s for s in sources if s["error"]]
    pairs = sum(s["pairs"] for s in sources)
    text = f"Ingestion: {pairs} pairs from {len(sources) - len(failed)} of {len(sources)} files"
    if failed:
        text += f". {len(failed)} of {len(sources)} files failed to ingest: " + _named(
            failed, lambda s: s["error"])
    warned = [s for s in sources if s.get("warnings") and not s["error"]]  # older: none
    if warned:
        text += f". {len(warned)} of {len(sources)} files with warnings: " + _named(
            warned, lambda s: "; ".join(s["warnings"]))
    dropped = {r: sum(s["dropped"].get(r, 0) for s in sources) for r in DROP_REASONS}
    if any(dropped.values()):
        reasons = ", ".join(f"{n} {r}" for r, n in dropped.items() if n)
        text += f". Dropped {sum(dropped.values())} pairs: {reasons}"
    return text + "."
