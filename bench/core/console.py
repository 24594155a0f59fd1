"""What reaches the user's terminal: advarena's own messages, never a library's unasked."""

from __future__ import annotations

import logging
import sys
import warnings


def configure_output(quiet: bool, verbose: bool) -> None:
    """advarena's own messages go to stderr (from INFO, or WARNING with ``--quiet``); what the
    libraries it uses log or warn (pyautoattack's settings, torch's UserWarnings) reaches the
    terminal only with ``--verbose``."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("advarena").setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"(bench|attacks|defenses|results)(\.|$)")
