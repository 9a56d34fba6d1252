"""The Cityscapes site: login with the environment's credentials, package ids and their published MD5s.

The archives need a login: :func:`login` posts ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD`` to
the site, then packages are fetched by id (:func:`package_url`) with the MD5 the site serves for them
(:func:`package_checksum`). The credentials are only ever placed in the login form: never logged,
stored or put in an error message. :mod:`fsanet.data.download` drives these steps.
"""

from __future__ import annotations

import logging
import os

import requests

from fsanet.data.errors import DownloadError

__all__ = [
    "PASSWORD_ENV",
    "SITE",
    "USER_ENV",
    "credentials",
    "has_credentials",
    "login",
    "package_checksum",
    "package_ids",
    "package_url",
    "resolve_package",
]

log = logging.getLogger(__name__)

SITE = "https://www.cityscapes-dataset.com"
USER_ENV, PASSWORD_ENV = "CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"


def has_credentials() -> bool:
    return bool(os.environ.get(USER_ENV) and os.environ.get(PASSWORD_ENV))


def credentials() -> tuple[str, str]:
    """Username and password from the environment (never logged)."""
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if not user or not password:
        raise DownloadError(
            f"Cityscapes needs a login: register at {SITE}/register/, then set the environment variables "
            f"{USER_ENV} and {PASSWORD_ENV} (or download the zips by hand and pass --from DIR)"
        )
    return user, password


def login(site: str = SITE, timeout: float = 60.0) -> requests.Session:
    """A ``requests.Session`` logged in to the Cityscapes site with the environment's credentials.

    The site answers a good login with a redirect (HTTP 302) and a session cookie.

    Raises:
        DownloadError: missing credentials, or the site refused them (the message holds neither).
    """
    user, password = credentials()
    session = requests.Session()
    url = f"{site.rstrip('/')}/login"
    try:
        session.get(url, allow_redirects=False, timeout=timeout).raise_for_status()
        r = session.post(
            url,
            data={"username": user, "password": password, "submit": "Login"},
            allow_redirects=False,
            timeout=timeout,
        )
    except requests.RequestException as err:
        session.close()
        raise DownloadError(f"{url}: login request failed ({type(err).__name__})") from None
    if r.status_code != 302:
        session.close()
        raise DownloadError(
            f"{url}: login refused (HTTP {r.status_code}); check {USER_ENV} and {PASSWORD_ENV}"
        )
    log.info("logged in to %s", site)
    return session


def package_url(site: str, package_id: int) -> str:
    return f"{site.rstrip('/')}/file-handling/?packageID={int(package_id)}"


def package_checksum(session: requests.Session, site: str, package_id: int, timeout: float = 60.0) -> str:
    """The MD5 the site publishes (to logged-in users) for a package, as ``"md5:HEX"``."""
    url = f"{site.rstrip('/')}/md5-sum/?packageID={int(package_id)}"
    r = session.get(url, allow_redirects=False, timeout=timeout)
    if r.status_code != 200 or not r.text.split():
        raise DownloadError(f"{url}: no MD5 for package {package_id} (HTTP {r.status_code}); not logged in?")
    return f"md5:{r.text.split()[0].lower()}"


def package_ids(session: requests.Session, site: str, timeout: float = 60.0) -> dict[str, int]:
    """Package name -> id, from the site's package list."""
    url = f"{site.rstrip('/')}/downloads/?list"
    r = session.get(url, allow_redirects=False, timeout=timeout)
    if r.status_code != 200:
        raise DownloadError(f"{url}: cannot list packages (HTTP {r.status_code}); not logged in?")
    try:
        return {p["name"]: int(p["packageID"]) for p in r.json()}
    except (ValueError, KeyError, TypeError) as err:
        raise DownloadError(f"{url}: unexpected package list ({err})") from None


def resolve_package(listed: dict[str, int], name: str, package_id: int) -> int:
    """The id the site lists for package ``name`` (warns if it differs from the params file's)."""
    if name not in listed:
        raise DownloadError(
            f"Cityscapes package '{name}' is not offered to this account (available: "
            f"{', '.join(sorted(listed)) or 'none'})"
        )
    if listed[name] != int(package_id):
        log.warning(
            "Cityscapes lists %s as package %d, not %d as in the params file; using %d",
            name,
            listed[name],
            package_id,
            listed[name],
        )
    return listed[name]
