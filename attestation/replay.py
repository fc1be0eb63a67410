"""TEST ONLY: replaying recorded evidence into a live KBS handshake.

Recorded evidence binds the report data of the session it was recorded in, so
a verifier configured with ``insecure_skip_report_data_binding = "<why>"``
does not compare it. :class:`BindingSkip` is that one switch for every
verifier that has it: the reason must be given, the mode is logged at WARNING
when the verifier is built and on every verification, and the claims say so
(``insecure_report_data_binding_skipped: true``) so no policy can mistake
them for bound evidence.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["BindingSkip"]

log = logging.getLogger(__name__)


class BindingSkip:
    """``reason=None``: the binding is checked (the default). ``what`` names the
    binding in the log lines (``"REPORT_DATA binding"``, ``"nonce binding"``)."""

    def __init__(self, reason: str | None, *, tee: str, what: str = "report-data binding") -> None:
        if reason is not None and not reason.strip():
            raise ValueError("say why the report-data binding is being skipped")
        self.reason = reason
        self.tee = tee
        self.what = what
        if reason is not None:
            log.warning("INSECURE %s verifier mode: %s disabled (%s)", tee, what, reason)

    @property
    def active(self) -> bool:
        """True when the binding is NOT checked."""
        return self.reason is not None

    def expected(self, expected_report_data: bytes) -> bytes | None:
        """The report data to check, or ``None`` (logged) when the binding is skipped."""
        if self.reason is None:
            return expected_report_data
        log.warning("INSECURE: %s %s not checked (%s)", self.tee, self.what, self.reason)
        return None

    def mark(self, claims: dict[str, Any]) -> dict[str, Any]:
        """``claims``, marked when the binding was skipped."""
        if self.reason is not None:
            claims["insecure_report_data_binding_skipped"] = True
        return claims
