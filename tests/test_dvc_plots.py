"""The offline `dvc plots show` template: pinned npm tarballs, verified, inlined; nothing from a CDN."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from fsanet.data.errors import ChecksumError
from fsanet.report.dvc_plots import VEGA_PACKAGES, VegaPackage, read_package_script, write_offline_template


def _tarball(member: str, text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def registry(tmp_path):
    """An npm-like registry on 127.0.0.1 serving files from a folder: {name}/-/{name}-{version}.tgz."""
    root = tmp_path / "registry"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def _publish(root: Path, name: str, version: str, script: str, text: str) -> VegaPackage:
    blob = _tarball(script, text)
    path = root / name / "-" / f"{name}-{version}.tgz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return VegaPackage(name, version, hashlib.sha512(blob).hexdigest(), script)


def test_pins_cover_the_cdn_versions_of_dvc_render():
    from dvc_render.vega import VegaRenderer

    for pkg in VEGA_PACKAGES:
        assert f"npm/{pkg.name}@{pkg.version}" in VegaRenderer.SCRIPTS
        assert len(pkg.sha512) == 128


def test_template_inlines_verified_scripts_and_caches_them(registry, tmp_path):
    root, url, hits = registry
    pkgs = (
        _publish(root, "vega", "1.0.0", "package/build/vega.min.js", "var vega = 1; // </script> inside"),
        _publish(root, "vega-embed", "2.0.0", "package/build/vega-embed.min.js", "function vegaEmbed(){}"),
    )
    out = write_offline_template(tmp_path / "t.html", tmp_path / "cache", url, pkgs)
    page = out.read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC adds no CDN tags to this page
    assert "var vega = 1" in page and "function vegaEmbed(){}" in page and "http" not in page
    assert "<\\/script> inside" in page  # a closing tag inside a script cannot end the element
    assert page.index("var vega = 1") < page.index("function vegaEmbed")
    n = len(hits)
    write_offline_template(tmp_path / "t2.html", tmp_path / "cache", url, pkgs)
    assert len(hits) == n  # cached tarballs, no request

    from dvc_render.html import HTML

    assert "<div>plot</div>" in HTML(page).with_element("<div>plot</div>").embed()


def test_a_tarball_that_is_not_the_pinned_one_is_refused(registry, tmp_path):
    root, url, _ = registry
    good = _publish(root, "vega", "1.0.0", "package/build/vega.min.js", "var vega = 1;")
    bad = VegaPackage(good.name, good.version, "0" * 128, good.script)
    with pytest.raises(ChecksumError, match="sha512"):
        write_offline_template(tmp_path / "t.html", tmp_path / "cache", url, (bad,))
    assert not (tmp_path / "t.html").exists() and not list((tmp_path / "cache").glob("*.tgz"))
    # a cached file that was tampered with is fetched again
    write_offline_template(tmp_path / "t.html", tmp_path / "cache", url, (good,))
    (tmp_path / "cache" / good.tarball).write_bytes(b"tampered")
    write_offline_template(tmp_path / "t.html", tmp_path / "cache", url, (good,))
    assert "var vega = 1" in (tmp_path / "t.html").read_text()


def test_missing_member_is_named(tmp_path):
    path = tmp_path / "p.tgz"
    path.write_bytes(_tarball("package/other.js", "x"))
    with pytest.raises(ValueError, match="no member package/build/vega.min.js"):
        read_package_script(path, "package/build/vega.min.js")
