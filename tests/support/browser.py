"""Debian's chromium under Playwright, as the page tests and the README screenshot use it.

The browser is never downloaded (no `playwright install`): the `chromium` apt
package, which .ci/run installs when it is missing.
"""
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (root in a container), and nothing that phones home: on a closed
# network those requests stall start-up.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def launch(playwright, profile_dir, width: int = 1280, height: int = 800):
    """A headless browser context with a fresh profile in `profile_dir`. Time limits
    of 2 min, not Playwright's 30 s: with those, the page tests' set-up failed in two
    of three runs on this 2-core machine at a load average of ~20."""
    context = playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height}, timeout=120_000)
    context.set_default_timeout(120_000)
    return context

# For page.wait_for_function(ALL_LOADED, arg=k): k result images, all decoded.
ALL_LOADED = """k => {
  const imgs = [...document.querySelectorAll('#results img')];
  return imgs.length === k && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""
