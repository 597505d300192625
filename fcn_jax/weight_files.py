"""The published FCN / VGG16 weight files: where to get them, a cache, checksums.

`fetch_weights(name)` returns the local path of a file of `WEIGHT_FILES` (docs/reference.md
§6.2), downloading it once into a cache folder (`$FCN_JAX_CACHE`, else `~/.cache/fcn_jax`)
and checking its md5 (or sha256 prefix) every time. Turning the file into Flax variables is
`fcn_jax.weights`' job; nothing here reads a tensor.
"""

import dataclasses
import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """A published weight file.

    Attributes:
      filename: name of the file in the cache folder.
      url: where `fetch_weights` downloads it from.
      md5: expected md5 hex digest, or None when only `sha256_prefix` is known.
      sha256_prefix: leading hex digits of the sha256 (torchvision names its files by them).
      page: where a person can download it by hand (defaults to `url`).
      description: what the file is.
    """

    filename: str
    url: str
    md5: str | None = None
    sha256_prefix: str | None = None
    page: str | None = None
    description: str = ""

    def checksum_text(self) -> str:
        """The expected checksum as printed in messages."""
        if self.md5:
            return f"md5 {self.md5}"
        return f"sha256 starting {self.sha256_prefix}"


def _drive_file(filename: str, drive_id: str, md5: str, description: str) -> WeightFile:
    return WeightFile(
        filename=filename,
        url=_DRIVE.format(drive_id),
        md5=md5,
        page=f"https://drive.google.com/uc?id={drive_id}",
        description=description,
    )


# Google Drive ids and md5s from pytorch-fcn (§6.2, current ids after 2021-08-23).
WEIGHT_FILES: dict[str, WeightFile] = {
    "vgg16_from_caffe": _drive_file(
        "vgg16_from_caffe.pth",
        "1adDBTGY3GcEB_47dvcibajyzi872RAs3",
        "aa75b158f4181e7f6230029eb96c1b13",
        "Caffe ILSVRC VGG16 in torchvision layout (for load_vgg16; BGR, mean-subtracted)",
    ),
    "fcn32s": _drive_file(
        "fcn32s_from_caffe.pth",
        "11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f",
        "d3eb467a80e7da0468a20dfcbc13e6c8",
        "voc-fcn32s (Caffe, converted by pytorch-fcn)",
    ),
    "fcn16s": _drive_file(
        "fcn16s_from_caffe.pth",
        "1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP",
        "a2d4035f669f09483b39c9a14a0d6670",
        "voc-fcn16s (Caffe, converted by pytorch-fcn)",
    ),
    "fcn8s": _drive_file(
        "fcn8s_from_caffe.pth",
        "1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI",
        "de93e540ec79512f8770033849c8ae89",
        "voc-fcn8s (Caffe, converted by pytorch-fcn)",
    ),
    "fcn8s_atonce": _drive_file(
        "fcn8s-atonce_from_caffe.pth",
        "0B9P1L--7Wd2vblE1VUIxV1o2d2M",
        "bfed4437e941fef58932891217fe6464",
        "voc-fcn8s-atonce (Caffe, converted by pytorch-fcn)",
    ),
    "vgg16_torchvision": WeightFile(
        filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256_prefix="397923af",
        description="torchvision's ImageNet VGG16 (RGB, ImageNet mean/std; not the FCN recipe)",
    ),
}

CACHE_ENV = "FCN_JAX_CACHE"
_CHUNK = 1 << 20


class WeightsUnavailableError(RuntimeError):
    """A weight file could not be found, downloaded or verified."""


def default_cache_dir() -> pathlib.Path:
    """`$FCN_JAX_CACHE` if set, else `~/.cache/fcn_jax`."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "fcn_jax")


def _digests(path: pathlib.Path) -> tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def _checksum_ok(spec: WeightFile, path: pathlib.Path) -> bool:
    md5, sha256 = _digests(path)
    if spec.md5:
        return md5 == spec.md5.lower()
    return sha256.startswith((spec.sha256_prefix or "").lower())


def _unavailable(spec: WeightFile, dest: pathlib.Path, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"{reason}\n"
        f"Get {spec.filename} ({spec.description or 'weights'}) by hand from\n"
        f"  {spec.page or spec.url}\n"
        f"check its {spec.checksum_text()}, and put it at\n"
        f"  {dest}\n"
        f"(or pass path=... to use a file elsewhere; set {CACHE_ENV} to move the cache folder)."
    )


def _download(spec: WeightFile, dest: pathlib.Path, timeout: float) -> None:
    """Downloads to a temp file next to `dest`; renamed only once the checksum matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=dest.parent)
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as r:
            if r.headers.get_content_type() == "text/html":
                # Google Drive answers with a page (quota, sign-in, virus-scan notice) rather
                # than the file; no point in saving it.
                raise WeightsUnavailableError(f"{spec.url} returned a web page, not the file")
            while chunk := r.read(_CHUNK):
                out.write(chunk)
        if not _checksum_ok(spec, tmp):
            raise WeightsUnavailableError(
                f"downloaded {spec.filename} from {spec.url} but its checksum is wrong"
            )
        os.replace(tmp, dest)
    except (OSError, urllib.error.URLError, WeightsUnavailableError) as err:
        raise _unavailable(spec, dest, f"Could not download {spec.filename}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def fetch_weights(
    name: str | WeightFile,
    cache_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Returns the local path of a published weight file, downloading it once if needed.

    Never called implicitly by a model: call it yourself and pass the path to `load_*`.

    Args:
      name: a key of `WEIGHT_FILES` (`vgg16_from_caffe`, `fcn32s`, `fcn16s`, `fcn8s`,
        `fcn8s_atonce`, `vgg16_torchvision`) or a `WeightFile` of your own.
      cache_dir: folder of downloaded files; default `default_cache_dir()`.
      path: use this file instead of the cache (it is still checksum-verified).
      download: when False, only look in the cache (no network).
      timeout: seconds for the network connection.

    Returns:
      Path of a file whose checksum matches.

    Raises:
      WeightsUnavailableError: the file is missing and cannot be downloaded (offline, Drive
        refusing, `download=False`), or its checksum is wrong. The message gives the URL,
        the file name, its checksum and the folder to put it in. A failed download leaves
        no file behind.
      KeyError: unknown `name`.
    """
    if isinstance(name, WeightFile):
        spec = name
    elif name in WEIGHT_FILES:
        spec = WEIGHT_FILES[name]
    else:
        raise KeyError(f"unknown weight file {name!r}; known: {sorted(WEIGHT_FILES)}")
    dest = pathlib.Path(cache_dir or default_cache_dir()) / spec.filename
    if path is not None:
        given = pathlib.Path(path)
        if not given.is_file():
            raise _unavailable(spec, dest, f"{given} does not exist.")
        if not _checksum_ok(spec, given):
            raise _unavailable(spec, dest, f"{given} has the wrong checksum.")
        return given
    if dest.is_file():
        if not _checksum_ok(spec, dest):
            raise _unavailable(
                spec, dest, f"{dest} has the wrong checksum (corrupt or another version)."
            )
        return dest
    if not download:
        raise _unavailable(spec, dest, f"{spec.filename} is not in the cache and download=False.")
    _download(spec, dest, timeout)
    return dest
