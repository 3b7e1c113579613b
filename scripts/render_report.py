"""Render an HTML report to PNG in headless Chromium, to look at it as a reader would.

    python scripts/render_report.py runs/bench/report.html [out.png] [--width 1400] [--height 16000]

Needs Debian's Chromium (``apt-get install chromium-headless-shell``, or ``chromium``); nothing is
downloaded at run time. The page is shot at ``--width`` × ``--height`` pixels and the blank bottom is
trimmed, so the PNG holds the whole page up to that height.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    sys.exit(f"no headless Chromium found (looked for {', '.join(BROWSERS)}): apt-get install chromium-headless-shell")


def render(html: Path, png: Path, *, width: int = 1400, height: int = 16000) -> Path:
    """Shoot ``html`` into ``png`` and trim the blank rows below the page's last content."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        cmd += [f"--window-size={width},{height}", f"--screenshot={shot}", html.resolve().as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        image = Image.open(shot).convert("RGB")
        ink = np.flatnonzero(np.asarray(image.convert("L")).min(axis=1) < 250)
        bottom = int(ink.max()) + 24 if len(ink) else image.height
        image.crop((0, 0, width, min(bottom, image.height))).save(png)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path, nargs="?")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=16000)
    args = parser.parse_args()
    if not args.html.is_file():
        sys.exit(f"{args.html}: no such HTML file")
    out = render(args.html, args.png or args.html.with_suffix(".png"), width=args.width, height=args.height)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
