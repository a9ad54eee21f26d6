"""PyTorch checkpoints (.pth, .pth.tar) read as NumPy arrays, without PyTorch and without
running any code from the file.

A checkpoint is a pickle, and unpickling runs whatever callables the file names: a checkpoint
downloaded from the internet is untrusted input. `torch.load(weights_only=True)` guards against
that, but needs PyTorch, which cmp_tf does not depend on (CPU wheels alone are ~800 MB). So this
module reads both of PyTorch's layouts itself, with an unpickler that resolves only an explicit
allow-list of names (OrderedDict, the tensor rebuild functions, the storage types), each mapped
to a function of ours that builds NumPy arrays; any other name in the pickle stops the read with
`UnsafeCheckpointError` naming it, before anything is called.

Layouts (torch/serialization.py):
  zip (torch >= 1.6, the default since): a zip archive <root>/data.pkl whose persistent ids
      ("storage", StorageType, key, location, numel) name raw little-endian storages stored as
      <root>/data/<key>; <root>/byteorder says "little" or "big" (absent: little).
  legacy (torch <= 1.5, e.g. the reference's 2019 checkpoints; `_use_new_zipfile_serialization=
      False` today): five consecutive things in one file: pickles of the magic number, the
      protocol version 1001 and a sys-info dict, the main pickle (persistent ids
      ("storage", StorageType, key, location, numel, view_metadata)), a pickle of the storage
      keys, then per key in that order an int64 element count and the storage's raw bytes.
The pre-2017 tar layout is refused with a message.

`save` writes either layout (tensors given as NumPy arrays), for tests and tools that need a
checkpoint without PyTorch; `torch.load` reads its files.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch/serialization.py: first pickle of a legacy file
PROTOCOL_VERSION = 1001
# torch.<Name>Storage -> element dtype (little-endian); bfloat16 is widened to float32 on read.
STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                  "BFloat16Storage": "<u2", "LongStorage": "<i8", "IntStorage": "<i4",
                  "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                  "BoolStorage": "?"}
_STORAGE_NAMES = {np.dtype(v): k for k, v in STORAGE_DTYPES.items() if k != "BFloat16Storage"}


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle names something outside the allow-list (possibly code)."""


class _StorageType:
    """Stands for torch.<name>Storage inside the pickle; not callable, so REDUCE on it fails."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A storage named by a persistent id; its bytes are attached once read. A legacy view is
    `numel` elements from `offset` of its `root` storage, whose bytes it reads."""

    def __init__(self, key, storage_type, numel, offset=0, root=None):
        self.key, self.type, self.numel, self.offset = key, storage_type, numel, offset
        self.root, self.data = root, None

    def values(self):
        """This storage's elements, or None before the file's bytes are read."""
        data = (self.root or self).data
        return None if data is None else data[self.offset:self.offset + self.numel]


class _Tensor:
    """A tensor as the pickle describes it; turned into an array once storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data  # a Parameter is its data here


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}


class _Unpickler(pickle.Unpickler):
    """Resolves only _ALLOWED names and torch storage types; collects storages by key."""

    def __init__(self, file, path, storages):
        super().__init__(file)
        self._path, self._storages = path, storages

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self._path}: refused to load: its pickle asks for {module}.{name}, which is not "
            "a tensor, a storage or a container. A checkpoint of weights needs nothing else; "
            "this file may run code when loaded with torch.load(weights_only=False).")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise ValueError(f"{self._path}: unexpected persistent id {pid!r} in the pickle "
                             "(expected a torch storage).")
        _, storage_type, key, _, numel, *view = pid
        root = self._storages.setdefault(key, _Storage(key, storage_type, numel))
        if root.type.name != storage_type.name or root.numel != numel:
            raise ValueError(f"{self._path}: storage {key} is described twice, differently.")
        if not view or view[0] is None:
            return root
        view_key, offset, view_numel = view[0]  # a legacy storage view: a slice of the root
        if not (isinstance(offset, int) and isinstance(view_numel, int) and offset >= 0
                and offset + view_numel <= numel):
            raise ValueError(f"{self._path}: storage view {view_key} lies outside storage {key}.")
        return _Storage(key, storage_type, view_numel, offset, root=root)


MAX_DIMS = 32  # more dimensions than any weight has: a size tuple past it is corrupt


def _check_ints(values, what, where):
    if not (isinstance(values, (tuple, list)) and len(values) <= MAX_DIMS and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
        raise ValueError(f"{where}: its {what} {values!r} is not a tuple of at most {MAX_DIMS} "
                         "non-negative counts.")
    return tuple(values)


def _array(tensor, path, key="a tensor"):
    """The _Tensor as a contiguous array, bounded by the bytes its storage holds: every element
    it reads lies inside the storage, and it has no more elements than the storage (a stride-0
    tensor claiming 10^12 elements over 4 bytes would otherwise be copied out in full)."""
    where = f"{path}: tensor {key}"
    storage = tensor.storage
    base = storage.values() if isinstance(storage, _Storage) else None
    if base is None:
        raise ValueError(f"{where} refers to no stored data.")
    size = _check_ints(tensor.size, "size", where)
    stride = _check_ints(tensor.stride, "stride", where)
    offset = tensor.offset
    if len(stride) != len(size) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"{where} has size {size}, stride {stride} and offset {offset!r}, "
                         "which do not fit together.")
    if 0 in size:
        return np.zeros(size, base.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(base):
        raise ValueError(f"{where} of size {size}, stride {stride} at offset {offset} reads "
                         f"past the end of its storage ({len(base)} elements, {base.nbytes} "
                         "bytes): a corrupt file.")
    count = int(np.prod(size, dtype=object))
    if count > len(base):
        raise ValueError(f"{where} has size {size}: {count} elements ({count * base.itemsize} "
                         f"bytes), more than its storage holds ({len(base)} elements, "
                         f"{base.nbytes} bytes): a corrupt or hostile file (an expanded view "
                         "must be saved with .contiguous()).")
    view = np.lib.stride_tricks.as_strided(
        base[offset:], size, [s * base.itemsize for s in stride], writeable=False)
    array = np.array(view, order="C")  # a copy: C-contiguous, owning its memory
    if storage.type.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _resolve(obj, path, key=""):
    """Replaces every _Tensor in nested dicts, lists and tuples with its array; `key` is
    where `obj` sits (state_dict.conv1.weight), for the errors."""
    if isinstance(obj, _Tensor):
        return _array(obj, path, key or "at the top level")
    if isinstance(obj, (_Storage, _StorageType)):
        raise ValueError(f"{path}: holds a bare storage, not a tensor; not a state dict.")
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for name, value in obj.items():
            out[name] = _resolve(value, path, f"{key}.{name}" if key else str(name))
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, path, f"{key}[{i}]") for i, v in enumerate(obj))
    return obj


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip archive but not a PyTorch checkpoint (no single "
                             f"<root>/data.pkl; found {archive.namelist()[:5]}).")
        root = pickles[0][:-len("data.pkl")]
        names = set(archive.namelist())
        order = "<"
        if root + "byteorder" in names:
            mark = archive.read(root + "byteorder")
            if mark not in (b"little", b"big"):
                raise ValueError(f"{path}: unknown byte order {mark!r}.")
            order = "<" if mark == b"little" else ">"
        storages = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
        for key, storage in storages.items():
            name = f"{root}data/{key}"
            if name not in names:
                raise ValueError(f"{path}: storage {key} is missing from the archive ({name}).")
            dtype = storage.type.dtype.newbyteorder(order)
            raw = archive.read(name)
            if len(raw) < storage.numel * dtype.itemsize:
                raise ValueError(f"{path}: {name} holds {len(raw)} bytes, fewer than its "
                                 f"{storage.numel} elements of {dtype}.")
            storage.data = np.frombuffer(raw, dtype, storage.numel).astype(dtype.newbyteorder("="))
    return obj


def _load_legacy(path, f):
    storages = {}
    size = os.fstat(f.fileno()).st_size

    def load(what):
        try:
            return _Unpickler(f, path, storages).load()
        except UnsafeCheckpointError:
            raise
        except Exception as error:
            kind = ("is not a PyTorch checkpoint" if what == "magic number" else
                    f"is a PyTorch checkpoint cut short or damaged ({size} bytes)")
            raise ValueError(f"{path} {kind}: reading its {what} failed "
                             f"({type(error).__name__}: {error}).") from error

    if load("magic number") != MAGIC_NUMBER:
        raise ValueError(f"{path} is not a PyTorch checkpoint (no zip archive, no legacy magic "
                         "number).")
    if load("protocol version") != PROTOCOL_VERSION:
        raise ValueError(f"{path}: unsupported legacy PyTorch protocol version.")
    sys_info = load("system information")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{path} was written on a big-endian machine; load it with torch and "
                         "save it again.")
    obj = load("main pickle")
    keys = load("storage keys")
    if not isinstance(keys, list) or set(keys) != {s for s in storages}:
        raise ValueError(f"{path}: its list of storages does not match the tensors it holds.")
    for key in keys:
        storage = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} ends before storage {key}: a truncated download?")
        (numel,) = struct.unpack("<q", head)
        if numel != storage.numel:
            raise ValueError(f"{path}: storage {key} holds {numel} elements, the pickle says "
                             f"{storage.numel}.")
        dtype = storage.type.dtype
        if numel * np.dtype(dtype).itemsize > size - f.tell():
            raise ValueError(f"{path} ends inside storage {key} ({numel} elements of "
                             f"{np.dtype(dtype).name}, {size - f.tell()} bytes left): a "
                             "truncated download?")
        storage.data = np.fromfile(f, dtype, numel) if numel else np.zeros(0, dtype)
        if len(storage.data) != numel:
            raise ValueError(f"{path} ends inside storage {key}: a truncated download?")
    return obj


# What a file that should be a checkpoint often is instead: (its first bytes, what it is).
_OTHER_FILES = (
    (b"PK\x03\x04", "starts as a zip archive, PyTorch's layout, but its end (the archive's "
                     "directory) is missing: a truncated download?"),
    (b"version https://git-lfs", "is a Git LFS pointer, not the file: fetch it with git lfs "
                                 "pull"),
    (b"\x1f\x8b", "is gzip-compressed: decompress it first"),
    (b"<!doctype html", "is an HTML page, not a checkpoint: a download page saved in its "
                        "place?"),
    (b"<html", "is an HTML page, not a checkpoint: a download page saved in its place?"),
)


def _refuse_other_files(path, start):
    """ValueError naming what a file that is not a zip checkpoint is, where its first bytes
    say so: an empty file, a cut-short zip, an LFS pointer, an HTML page, a gzip file."""
    if not start:
        raise ValueError(f"{path} is empty (0 bytes): a failed download?")
    head = start.lstrip().lower()
    for magic, what in _OTHER_FILES:
        if head.startswith(magic.lower()):
            raise ValueError(f"{path} {what} ({os.path.getsize(path)} bytes).")


def load(path):
    """The object saved in a PyTorch checkpoint, its tensors as NumPy arrays.

    Args:
        path: a file written by torch.save, in the zip or the legacy layout.
    Returns:
        What was saved (dicts, OrderedDicts, lists, numbers, strings), each tensor as a
        C-contiguous array of its dtype (bfloat16 widened to float32).
    Raises:
        UnsafeCheckpointError: the pickle names anything but containers, tensors and storages.
        ValueError: a missing file, not a PyTorch checkpoint, or a corrupt one; the message
            names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path} " + ("is a folder" if os.path.isdir(path) else
                                       "does not exist") + " (expected a PyTorch checkpoint).")
    if zipfile.is_zipfile(path):
        try:
            return _resolve(_load_zip(path), path)
        except ValueError:  # named already (UnsafeCheckpointError is one)
            raise
        except Exception as error:  # noqa: BLE001  a damaged archive or pickle: a bad CRC,
            # a truncated pickle, a member that does not inflate
            raise ValueError(f"{path} is a corrupt PyTorch checkpoint ({type(error).__name__}: "
                             f"{error}).") from error
    with open(path, "rb") as f:
        start = f.read(512)
        _refuse_other_files(path, start)
        if len(start) == 512 and start[257:262] == b"ustar":
            raise ValueError(f"{path} uses PyTorch's pre-2017 tar layout: load it with torch "
                             "and save it again.")
        f.seek(0)
        return _resolve(_load_legacy(path, f), path)


# ------------------------------------------------------------------------------- writing

class _Writer:
    """A protocol-2 pickle of nested containers whose arrays become torch tensors (written
    opcode by opcode: pickling the torch names for real would need torch importable)."""

    def __init__(self, legacy):
        self.out, self.legacy, self.storages = io.BytesIO(), legacy, []

    def _global(self, module, name):
        self.out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def _ordered_dict(self, items):
        self._global("collections", "OrderedDict")
        self.out.write(pickle.EMPTY_TUPLE + pickle.REDUCE)
        self._items(items)

    def _items(self, items):
        if items:
            self.out.write(pickle.MARK)
            for key, value in items:
                self.save(key)
                self.save(value)
            self.out.write(pickle.SETITEMS)

    def _tensor(self, array):
        array = np.array(array, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        array = array.astype(array.dtype.newbyteorder("<"))
        if array.dtype not in _STORAGE_NAMES:
            raise ValueError(f"No torch storage type holds dtype {array.dtype}.")
        key = str(len(self.storages))
        self.storages.append((key, array))
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out.write(pickle.MARK)
        self.out.write(pickle.MARK)  # the persistent id
        self.save("storage")
        self._global("torch", _STORAGE_NAMES[array.dtype])
        for value in (key, "cpu", int(array.size)) + ((None,) if self.legacy else ()):
            self.save(value)
        self.out.write(pickle.TUPLE + pickle.BINPERSID)
        strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
        for value in (0, tuple(int(n) for n in array.shape), strides, False):
            self.save(value)
        self._ordered_dict([])  # backward hooks
        self.out.write(pickle.TUPLE + pickle.REDUCE)

    def save(self, obj):
        w = self.out.write
        if isinstance(obj, np.ndarray):
            self._tensor(obj)
        elif isinstance(obj, collections.OrderedDict):
            self._ordered_dict(list(obj.items()))
        elif isinstance(obj, dict):
            w(pickle.EMPTY_DICT)
            self._items(list(obj.items()))
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            w(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)
        elif obj is None:
            w(pickle.NONE)
        elif isinstance(obj, bool):
            w(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif isinstance(obj, int):
            if -2**31 <= obj < 2**31:
                w(pickle.BININT + struct.pack("<i", obj))
            else:
                data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                w(pickle.LONG1 + bytes([len(data)]) + data)
        elif isinstance(obj, float):
            w(pickle.BINFLOAT + struct.pack(">d", obj))
        elif isinstance(obj, tuple):
            w(pickle.MARK)
            for value in obj:
                self.save(value)
            w(pickle.TUPLE)
        elif isinstance(obj, list):
            w(pickle.EMPTY_LIST)
            if obj:
                w(pickle.MARK)
                for value in obj:
                    self.save(value)
                w(pickle.APPENDS)
        else:
            raise ValueError(f"Cannot write {type(obj).__name__} into a checkpoint.")

    def dumps(self, obj):
        self.out.write(pickle.PROTO + bytes([2]))
        self.save(obj)
        self.out.write(pickle.STOP)
        return self.out.getvalue()


def save(obj, path, legacy=True):
    """Writes `obj` (nested dicts / lists of arrays, numbers, strings) as torch.save would.

    Args:
        legacy: the torch <= 1.5 layout (what the reference's checkpoints use), else the zip one.
    """
    writer = _Writer(legacy)
    main = writer.dumps(obj)
    if legacy:
        sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}
        with open(path, "wb") as f:
            for head in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info):
                f.write(pickle.dumps(head, protocol=2))
            f.write(main)
            f.write(pickle.dumps([key for key, _ in writer.storages], protocol=2))
            for _, array in writer.storages:
                f.write(struct.pack("<q", array.size) + array.tobytes())
        return
    root = os.path.splitext(os.path.basename(path))[0] or "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", main)
        archive.writestr(f"{root}/byteorder", "little")
        for key, array in writer.storages:
            archive.writestr(f"{root}/data/{key}", array.tobytes())
        archive.writestr(f"{root}/version", "3\n")
