"""Tests for fcn_jax.weight_files, offline: local files, a local HTTP server, a closed port."""

import functools
import hashlib
import http.server
import pathlib
import threading

import jax
import numpy as np
import pytest

from fcn_jax import weight_files, weights

PARITY = pathlib.Path(__file__).parent / "testdata" / "parity"


def _spec_for(content: bytes, url: str = "http://127.0.0.1:9/w.pth") -> weight_files.WeightFile:
    return weight_files.WeightFile("w.pth", url, md5=hashlib.md5(content).hexdigest())


def test_published_files_are_registered():
    files = weight_files.WEIGHT_FILES
    assert files["fcn8s_atonce"].filename == "fcn8s-atonce_from_caffe.pth"
    assert files["fcn32s"].md5 == "d3eb467a80e7da0468a20dfcbc13e6c8"
    assert files["vgg16_from_caffe"].md5 == "aa75b158f4181e7f6230029eb96c1b13"
    assert files["vgg16_torchvision"].url.endswith("/vgg16-397923af.pth")
    with pytest.raises(KeyError, match="fcn8s_atonce"):
        weight_files.fetch_weights("fcn4s")


def test_path_override_is_checksummed(tmp_path):
    good = tmp_path / "mine.pth"
    good.write_bytes(b"weights")
    spec = _spec_for(b"weights")
    assert weight_files.fetch_weights(spec, cache_dir=tmp_path / "cache", path=good) == good
    with pytest.raises(weight_files.WeightsUnavailableError) as info:
        weight_files.fetch_weights("fcn32s", cache_dir=tmp_path / "cache", path=good)
    message = str(info.value)
    assert "wrong checksum" in message
    assert "https://drive.google.com/uc?id=11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f" in message
    assert "md5 d3eb467a80e7da0468a20dfcbc13e6c8" in message
    assert str(tmp_path / "cache" / "fcn32s_from_caffe.pth") in message


def test_cache_hit_and_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weight_files.CACHE_ENV, str(tmp_path))
    assert weight_files.default_cache_dir() == tmp_path
    (tmp_path / "w.pth").write_bytes(b"cached")
    assert weight_files.fetch_weights(_spec_for(b"cached")) == tmp_path / "w.pth"
    with pytest.raises(weight_files.WeightsUnavailableError, match="wrong checksum"):
        weight_files.fetch_weights(_spec_for(b"something else"))
    assert (tmp_path / "w.pth").read_bytes() == b"cached"  # the user's file is left alone


def test_offline_gives_one_clear_message_and_leaves_nothing(tmp_path):
    spec = _spec_for(b"x")
    with pytest.raises(weight_files.WeightsUnavailableError) as info:
        weight_files.fetch_weights(spec, cache_dir=tmp_path, timeout=5)
    message = str(info.value)
    assert "Could not download w.pth" in message
    assert "http://127.0.0.1:9/w.pth" in message
    assert f"md5 {spec.md5}" in message and str(tmp_path / "w.pth") in message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(weight_files.WeightsUnavailableError, match="download=False"):
        weight_files.fetch_weights(spec, cache_dir=tmp_path, download=False)


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on localhost serving files from a folder."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_then_renames(tmp_path, http_root):
    root, base = http_root
    content = (PARITY / "fcn8s_bilinear.pth").read_bytes()
    (root / "w.pth").write_bytes(content)
    cache = tmp_path / "cache"
    path = weight_files.fetch_weights(_spec_for(content, f"{base}/w.pth"), cache_dir=cache)
    assert path == cache / "w.pth" and path.read_bytes() == content
    assert [p.name for p in cache.iterdir()] == ["w.pth"]
    jax.tree.map(
        np.testing.assert_array_equal,
        weights.load_pytorch_fcn(path, "fcn8s"),
        weights.load_pytorch_fcn(PARITY / "fcn8s_bilinear.pth", "fcn8s"),
    )


def test_download_with_wrong_checksum_leaves_no_file(tmp_path, http_root):
    root, base = http_root
    (root / "w.pth").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(weight_files.WeightsUnavailableError, match="checksum is wrong"):
        weight_files.fetch_weights(_spec_for(b"genuine", f"{base}/w.pth"), cache_dir=cache)
    assert list(cache.iterdir()) == []
