"""Helpers shared by the rule files (kept apart from the rules, as `snakemake --lint` asks)."""

import hashlib
from pathlib import Path


def fsanet_source_hash():
    """Hash of the package sources: passed as a param so that a code change under fsanet/ reruns jobs."""
    digest = hashlib.sha256()
    root = Path(workflow.basedir) / "fsanet"
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def dotlist(items):
    """Join fsanet CLI overrides (key=value) into one shell-quoted string."""
    return " ".join(f"'{item}'" for item in items)


CODE_HASH = fsanet_source_hash()
