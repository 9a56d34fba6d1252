"""An offline page template for ``dvc plots show``: Vega, Vega-Lite and vega-embed inlined.

DVC's default page loads the three libraries from a CDN, so without network the plots silently stay
blank. :func:`write_offline_template` downloads the same versions DVC asks for from the npm registry
once (each tarball verified against its pinned sha512, which is npm's published ``dist.integrity``),
reads the minified build of each, and writes a page template with the scripts inlined. ``dvc plots
show --html-template FILE`` (``make plots``) then renders with no network at all.

The tarballs are cached (``cache_dir``), so later templates need no network either.
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fsanet.data.download import fetch, file_digest
from fsanet.io import write_text

__all__ = ["NPM_REGISTRY", "VEGA_PACKAGES", "VegaPackage", "read_package_script", "write_offline_template"]

log = logging.getLogger(__name__)

NPM_REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class VegaPackage:
    """One npm package: its tarball is ``{registry}/{name}/-/{name}-{version}.tgz``."""

    name: str
    version: str
    sha512: str  # hex of npm's dist.integrity (base64 sha512)
    script: str  # the member holding the minified browser build

    @property
    def tarball(self) -> str:
        return f"{self.name}-{self.version}.tgz"

    def url(self, registry: str = NPM_REGISTRY) -> str:
        return f"{registry.rstrip('/')}/{self.name}/-/{self.tarball}"


#: the versions dvc-render's default page loads from its CDN
VEGA_PACKAGES = (
    VegaPackage(
        "vega",
        "5.20.2",
        "aa61fb683f4618fa6cb157712f5c6071dc536d0cf2454791475e8eb37f39ca6b"
        "d0862c02610340ebe79750f0190d354b7e4d115eee89ce3ea4504e6343cd0457",
        "package/build/vega.min.js",
    ),
    VegaPackage(
        "vega-lite",
        "5.2.0",
        "631720f0cbd87f11dc1ba05b91a293d2854220c21c135f54bea22c130066c9df"
        "fb8769f35bba119c80fcd53f14ad8ee1a43ac8afac1ad89003393d9d846344af",
        "package/build/vega-lite.min.js",
    ),
    VegaPackage(
        "vega-embed",
        "6.18.2",
        "c1c0f240f1382796a2083737fecb87e51403beb2a48ee2e487351c6ce2f01243"
        "45f3ffa9a75eed4b426087312f00f35183ee5a1b5fcddb2762c6af0b93774e96",
        "package/build/vega-embed.min.js",
    ),
)

_PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot (offline: {versions})</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def read_package_script(tarball: str | Path, member: str) -> str:
    """The text of one regular-file member of an npm tarball (nothing is extracted to disk).

    Raises:
        ValueError: the member is missing or not a regular file.
    """
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise ValueError(f"{tarball}: no member {member}; not the expected npm package") from None
        if not info.isfile():
            raise ValueError(f"{tarball}: {member} is not a regular file")
        data = tar.extractfile(info)
        assert data is not None  # a regular file always has content
        return data.read().decode("utf-8")


def write_offline_template(
    out: str | Path,
    cache_dir: str | Path,
    registry: str = NPM_REGISTRY,
    packages: tuple[VegaPackage, ...] = VEGA_PACKAGES,
    progress: bool = False,
) -> Path:
    """Write the page template with the Vega libraries inlined, downloading the tarballs if needed.

    Args:
        out: the template to write (atomically).
        cache_dir: where the verified tarballs are kept.
        registry: the npm registry (a local mirror, or a test server).
        packages: what to inline, in load order.
        progress: show download progress bars.

    Raises:
        fsanet.data.errors.ChecksumError: a tarball is not the pinned one (it is not kept).
        fsanet.data.errors.DownloadError: the registry cannot be reached.
    """
    cache_dir = Path(cache_dir)
    scripts = []
    for pkg in packages:
        tarball = cache_dir / pkg.tarball
        if tarball.is_file() and file_digest(tarball, "sha512") != pkg.sha512:
            log.warning("%s: cached tarball does not match its pinned sha512; downloading it again", tarball)
            tarball.unlink()
        if not tarball.is_file():
            fetch(pkg.url(registry), tarball, f"sha512:{pkg.sha512}", progress=progress)
        code = read_package_script(tarball, pkg.script).replace("</script", "<\\/script")
        scripts.append(f"    <!-- {pkg.name} {pkg.version} ({pkg.script}) -->\n    <script>{code}</script>")
    versions = ", ".join(f"{p.name} {p.version}" for p in packages)
    page = _PAGE.format(versions=versions, scripts="\n".join(scripts))
    return write_text(out, page)
