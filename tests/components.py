"""Optional machine components some tests need (a browser). Without one, such a test is
reported skipped with the exact install line; CI sets ``ADVARENA_REQUIRE_<NAME>=1`` (or
``ADVARENA_REQUIRE_ALL=1``), which turns that skip into a failure, so CI never passes without
running it."""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL = {"browser": "apt-get install -y chromium   (Debian's headless Chromium; .ci/run installs it)"}


def require(component: str, found: str | None) -> str:
    """``found`` (a path), or skip naming the missing component and its install line; a failure
    instead when CI requires the component."""
    if found:
        return found
    message = f"this test needs the {component}, which this machine lacks: {INSTALL[component]}"
    if os.environ.get(f"ADVARENA_REQUIRE_{component.upper()}") == "1" or os.environ.get("ADVARENA_REQUIRE_ALL") == "1":
        pytest.fail(message + f" (ADVARENA_REQUIRE_{component.upper()}=1 makes it required)")
    pytest.skip(message)


def chromium() -> str:
    return require("browser", shutil.which("chromium") or shutil.which("chromium-browser"))
