r"""Installs the page's runtime, onnxruntime-web from the npm registry, into its static folder:
the page loads it from there and never fetches code from anywhere else.

  python -m cmp_tf.apps.browser.install        # needs Node.js's npm; copies ~12 MB

Only the files the page uses are kept (the WebAssembly build and its loader); the version is
pinned (ORT_WEB_VERSION) and written next to them.
"""
import os
import shutil
import subprocess
import sys
import tempfile

from absl import app

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
VENDOR = os.path.join(STATIC, "vendor")
ORT_WEB_VERSION = "1.31.1"
# The UMD bundle of the WebAssembly backend (global `ort`), the module it imports to start
# WebAssembly, and the binary.
FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
VERSION_FILE = "VERSION"


def installed(vendor=None):
    """Whether `vendor` (default VENDOR) holds every runtime file of the pinned version."""
    vendor = vendor or VENDOR
    try:
        with open(os.path.join(vendor, VERSION_FILE)) as f:
            version = f.read().strip()
    except OSError:
        return False
    return version == ORT_WEB_VERSION and all(
        os.path.isfile(os.path.join(vendor, name)) for name in FILES)


def check_installed():
    """Refuses to serve or time the page without its runtime, naming the command that installs
    it."""
    if not installed():
        raise ValueError(f"The page's runtime (onnxruntime-web {ORT_WEB_VERSION}) is not in "
                         f"{VENDOR}: run python -m cmp_tf.apps.browser.install.")


def install(vendor=None, npm="npm", log=print):
    """npm-installs onnxruntime-web@ORT_WEB_VERSION into a temporary folder and copies FILES
    into `vendor` (default VENDOR), replacing what is there. Raises ValueError without npm or
    a file."""
    vendor = vendor or VENDOR
    command = shutil.which(npm)
    if command is None:
        raise ValueError(f"npm={npm!r} is not on PATH: install Node.js (with npm) to fetch the "
                         "page's runtime from the npm registry.")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([command, "install", "--prefix", tmp, "--no-audit", "--no-fund",
                        "--ignore-scripts", "--loglevel=error",
                        f"onnxruntime-web@{ORT_WEB_VERSION}"], check=True)
        dist = os.path.join(tmp, "node_modules", "onnxruntime-web", "dist")
        missing = [name for name in FILES if not os.path.isfile(os.path.join(dist, name))]
        if missing:
            raise ValueError(f"onnxruntime-web@{ORT_WEB_VERSION} has no {', '.join(missing)} "
                             f"in {dist}.")
        os.makedirs(vendor, exist_ok=True)
        if os.path.exists(os.path.join(vendor, VERSION_FILE)):  # written again last: a copy
            os.remove(os.path.join(vendor, VERSION_FILE))  # cut short is never taken as whole
        for name in FILES:
            shutil.copyfile(os.path.join(dist, name), os.path.join(vendor, name))
    with open(os.path.join(vendor, VERSION_FILE), "w") as f:
        f.write(ORT_WEB_VERSION + "\n")
    size = sum(os.path.getsize(os.path.join(vendor, name)) for name in FILES)
    log(f"onnxruntime-web {ORT_WEB_VERSION}: {len(FILES)} files, {size / 1e6:.1f} MB in {vendor}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
    try:
        install()
    except (ValueError, subprocess.CalledProcessError) as error:
        print(f"install: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a package installed read-only (system site-packages)
        print(f"install: could not write the runtime into {VENDOR}: {error.strerror} "
              f"({error.filename}).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
