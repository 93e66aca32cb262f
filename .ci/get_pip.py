"""Install pip into a venv created with --without-pip (Debian's python3 without the
python3-venv package has no ensurepip). Uses only the standard library and PyPI's
simple index; the wheel's sha256 from the index is checked."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

PIP_VERSION = "26.0.1"
INDEX = "https://pypi.org/simple/pip/"


def main() -> int:
    with urllib.request.urlopen(INDEX, timeout=60) as response:
        page = response.read().decode()
    pattern = rf'href="([^"]+/pip-{re.escape(PIP_VERSION)}-py3-none-any\.whl)#sha256=([0-9a-f]+)"'
    match = re.search(pattern, page)
    if match is None:
        print(f"pip {PIP_VERSION} not found on {INDEX}", file=sys.stderr)
        return 1
    url, digest = match.groups()
    target = Path(tempfile.mkdtemp()) / f"pip-{PIP_VERSION}-py3-none-any.whl"
    if not url.startswith("https://"):
        print(f"refusing non-https download {url}", file=sys.stderr)
        return 1
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (https only)
        target.write_bytes(response.read())
    if hashlib.sha256(target.read_bytes()).hexdigest() != digest:
        print("pip wheel checksum mismatch", file=sys.stderr)
        return 1
    # a wheel is a zip importable by Python: run pip from it to install itself
    return subprocess.call([sys.executable, f"{target}/pip", "install", "-q", str(target)])


if __name__ == "__main__":
    sys.exit(main())
