"""Open a sklearn-peek report.html in headless Chromium and check its figures load.

Usage::

    sklearn-peek demo --out peek-demo          # or: sklearn-peek analyze ...
    python benchmarks/screenshot_report.py peek-demo/report.html \\
        --screenshot peek-demo/screenshot.png

Three checks, each printed; the exit code is 0 only when all pass:

1. static: every ``<img>`` in the page has a ``data:image/png;base64,`` source
   that decodes to a PNG, or a relative path to an existing PNG file;
2. browser: Chromium loads a copy of the page (written beside it, so relative
   figure paths resolve) with a small script that records, after the page's
   ``load`` event, each image's ``complete`` flag and natural size; the DOM is
   dumped (``--dump-dom``) and every image must have loaded with a non-zero size;
3. screenshot: Chromium writes a PNG of the page (for a person to look at); it
   must exist and not be blank.

Needs Chromium (Debian: ``apt-get install -y chromium``). Nothing is fetched
from the network: the report is self-contained and the flags switch off
Chromium's own background traffic.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]

_PROBE = """
<script>
window.addEventListener("load", function () {
  var imgs = document.getElementsByTagName("img");
  for (var i = 0; i < imgs.length; i++) {
    var im = imgs[i];
    im.setAttribute("data-peek-check",
      (im.complete ? "complete" : "pending") + ":" + im.naturalWidth + "x" +
      im.naturalHeight);
  }
  document.body.setAttribute("data-peek-probed", String(imgs.length));
});
</script>
"""


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []  # list of attribute dicts

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def _png_size(data):
    if not data.startswith(PNG_MAGIC) or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


def static_check(report):
    """Return a list of (src summary, ok, detail) for every img of the page."""
    parser = _Images()
    parser.feed(report.read_text(encoding="utf-8"))
    out = []
    for attrs in parser.images:
        src = attrs.get("src", "")
        if src.startswith("data:image/png;base64,"):
            try:
                data = base64.b64decode(src.split(",", 1)[1], validate=True)
            except ValueError as exc:
                out.append(("data URI", False, f"bad base64: {exc}"))
                continue
            size = _png_size(data)
            out.append(
                ("data URI", size is not None, f"PNG {size}" if size else "not a PNG")
            )
        elif src and not re.match(r"^[a-z]+:", src):
            path = report.parent / src
            if not path.is_file():
                out.append((src, False, "file missing"))
                continue
            size = _png_size(path.read_bytes())
            out.append((src, size is not None, f"PNG {size}" if size else "not a PNG"))
        else:
            out.append(
                (src[:40], False, "unsupported source (expected data URI or file)")
            )
    return out


def find_chromium(given=None):
    for name in [given, "chromium", "chromium-browser", "google-chrome", "chrome"]:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run_chromium(chromium, args, timeout):
    with tempfile.TemporaryDirectory(prefix="peek-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False
        )


def browser_check(report, chromium, timeout):
    """Load a probed copy of the page; return (n_images_seen, list of states)."""
    probe = report.parent / f".peek-check-{os.getpid()}.html"
    text = report.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        proc = _run_chromium(
            chromium,
            ["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()],
            timeout,
        )
    finally:
        probe.unlink(missing_ok=True)
    dom = proc.stdout
    probed = re.search(r'data-peek-probed="(\d+)"', dom)
    states = re.findall(r'data-peek-check="([^"]*)"', dom)
    return (int(probed.group(1)) if probed else None), states, proc


def take_screenshot(report, chromium, path, width, height, timeout):
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    proc = _run_chromium(
        chromium,
        [
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            f"--screenshot={path}",
            report.resolve().as_uri(),
        ],
        timeout,
    )
    return path, proc


def _not_blank(path):
    """True when the screenshot has real content (not one flat colour)."""
    try:
        import matplotlib.image as mpimg
        import numpy as np
    except ImportError:  # pragma: no cover
        return path.stat().st_size > 10_000
    img = mpimg.imread(str(path))
    return float(np.asarray(img)[..., :3].std()) > 0.02


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="path to report.html")
    p.add_argument(
        "--screenshot", help="where to write the PNG (default: beside the report)"
    )
    p.add_argument("--chromium", help="Chromium executable (default: found on PATH)")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=3600)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)

    report = Path(args.report)
    if not report.is_file():
        print(f"screenshot_report: error: {report} does not exist", file=sys.stderr)
        return 2
    failures = 0

    static = static_check(report)
    bad = [s for s in static if not s[1]]
    print(
        f"[static] {len(static)} <img> tags, {len(static) - len(bad)} valid PNG sources"
    )
    for src, _, detail in bad:
        print(f"[static]   FAIL {src}: {detail}")
    failures += bool(bad) + (len(static) == 0)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("[browser] FAIL Chromium not found (apt-get install -y chromium)")
        return 1
    n_seen, states, proc = browser_check(report, chromium, args.timeout)
    loaded = [
        s
        for s in states
        if s.startswith("complete:") and not s.startswith("complete:0x")
    ]
    print(
        f"[browser] Chromium saw {n_seen} images; {len(loaded)} loaded with a size: "
        + ", ".join(s.split(":", 1)[1] for s in loaded)
    )
    if n_seen is None:
        print(
            f"[browser]   FAIL the page did not finish loading (rc {proc.returncode})"
        )
        print(proc.stderr[-2000:])
        failures += 1
    elif n_seen != len(static) or len(loaded) != n_seen:
        print(f"[browser]   FAIL states: {states}")
        failures += 1

    shot = args.screenshot or report.with_name("screenshot.png")
    path, proc = take_screenshot(
        report, chromium, shot, args.width, args.height, args.timeout
    )
    if path.is_file() and _not_blank(path):
        print(f"[screenshot] wrote {path} ({path.stat().st_size // 1024} KiB)")
    else:
        print(f"[screenshot] FAIL no usable screenshot (rc {proc.returncode})")
        print(proc.stderr[-2000:])
        failures += 1
    print("OK" if failures == 0 else f"FAILED ({failures} check(s))")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
